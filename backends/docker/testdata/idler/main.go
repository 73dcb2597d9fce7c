// Command idler is the entrypoint of the watch tests' containers: it idles
// until killed ("idle"), exits with status 3 after a number of milliseconds
// ("exit MS"), or takes up to 256 MiB ("oom"), which a container limited
// below that is OOM-killed for; without a limit it idles, so that an engine
// that does not enforce limits fails the test instead of the machine.
package main

import (
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "exit":
			ms, _ := strconv.Atoi(os.Args[2])
			time.Sleep(time.Duration(ms) * time.Millisecond)
			os.Exit(3)
		case "oom":
			var keep [][]byte
			for range 256 {
				b := make([]byte, 1<<20)
				for i := range b {
					b[i] = 1
				}
				keep = append(keep, b)
			}
			_ = keep
		}
	}
	for {
		time.Sleep(time.Hour)
	}
}
