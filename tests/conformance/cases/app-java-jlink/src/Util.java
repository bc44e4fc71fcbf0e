class Util {}
