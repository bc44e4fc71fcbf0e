test('up', () => {})
