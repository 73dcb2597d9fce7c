package rules

import (
	"fmt"
	"os"
)

// DefaultSource is the description used when none is given: three machines that
// are Consul servers, on the local backend. It is what `raptiformica up` boots.
const DefaultSource = `# The built-in platform: three Consul servers as local processes.
cluster = "local"

machine "server" {
  min           = 3
  consul_server = true
  backends      = ["local"]
}
`

// Default returns the built-in description, parsed.
func Default() *Platform {
	p, err := Parse("default.hcl", []byte(DefaultSource), Options{})
	if err != nil {
		panic(fmt.Sprintf("built-in platform description is invalid: %v", err))
	}
	return p
}

func readFile(name string) ([]byte, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("read platform description: %w", err)
	}
	return b, nil
}
