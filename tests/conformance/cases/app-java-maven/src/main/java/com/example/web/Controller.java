class Controller {}
