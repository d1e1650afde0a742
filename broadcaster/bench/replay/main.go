package main

import (
	"os"

	"trm-live/testkit/benchenv"
)

func main() { os.Exit(benchenv.Main("replay", LoadConfig, Run)) }
