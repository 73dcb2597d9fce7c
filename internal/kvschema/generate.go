package kvschema

// docs/kv.md is this package's doc comments, made a page.
//go:generate go run ./kvdoc -dir . -o ../../docs/kv.md
