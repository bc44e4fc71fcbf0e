import 'ui'
