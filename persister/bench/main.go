package main

import (
	"os"

	"trm-live/testkit/benchenv"
)

func main() { os.Exit(benchenv.Main("persister", LoadConfig, Run)) }
