const greeting: string = 'hi'
export default greeting
