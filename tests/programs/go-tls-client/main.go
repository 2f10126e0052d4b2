// A minimal HTTPS client for enforcer's Go tests: connects to the address given as the first
// argument with crypto/tls, sends an HTTP/1.0 GET, and prints the response. Standard library
// only, so it builds offline.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go-tls-client HOST:PORT")
		os.Exit(2)
	}
	conn, err := tls.Dial("tcp", os.Args[1], &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		fmt.Fprintln(os.Stderr, "write:", err)
		os.Exit(1)
	}
	body, err := io.ReadAll(conn)
	if err != nil && len(body) == 0 {
		fmt.Fprintln(os.Stderr, "read:", err)
		os.Exit(1)
	}
	os.Stdout.Write(body)
}
