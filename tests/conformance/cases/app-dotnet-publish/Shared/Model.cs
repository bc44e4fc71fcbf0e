class Model {}
