export const path: string = '/'
