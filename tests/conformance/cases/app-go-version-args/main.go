package main

var version, commit string
