// Reduces a Go 1.18+ amd64 binary's .gopclntab to a few named functions, with their real names,
// machine code and _func records, and writes fuzz inputs for go_tables in the four table layouts:
// u32 LE table length, the table, then the functions' code packed from 0x401000 (see
// fuzz/fuzz_targets/go_tables.rs). Also writes the binary's .go.buildinfo as a seed.
package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
)

var le = binary.LittleEndian

var wanted = []string{
	"crypto/tls.(*Conn).Write",
	"crypto/tls.(*Conn).Read",
	"crypto/tls.(*Conn).handshakeContext",
	"main.main",
}

type fn struct {
	name string
	code []byte
	rest []byte // the _func record after entryoff and nameoff
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func main() {
	f, err := elf.Open(os.Args[1])
	must(err)
	pcln, err := f.Section(".gopclntab").Data()
	must(err)
	text := f.Section(".text")
	code, err := text.Data()
	must(err)
	magic := le.Uint32(pcln)
	if magic != 0xfffffff0 && magic != 0xfffffff1 {
		panic(fmt.Sprintf("not a Go 1.18+ table: %#x", magic))
	}
	word := func(n int) uint64 { return le.Uint64(pcln[8+8*n:]) }
	nfunc, names, functab := int(word(0)), word(3), word(7)
	byName := map[string]fn{}
	for i := 0; i < nfunc; i++ {
		slot := functab + uint64(8*i)
		entry, funcoff := le.Uint32(pcln[slot:]), le.Uint32(pcln[slot+4:])
		end := le.Uint32(pcln[slot+8:])
		rec := functab + uint64(funcoff)
		nameoff := le.Uint32(pcln[rec+4:])
		n := pcln[names+uint64(nameoff):]
		name := string(n[:bytes.IndexByte(n, 0)])
		byName[name] = fn{name, code[entry:end], pcln[rec+8 : rec+40]}
	}
	var fns []fn
	for _, w := range wanted {
		f, ok := byName[w]
		if !ok {
			panic("no " + w)
		}
		fns = append(fns, f)
	}
	for magic, out := range map[uint32]string{
		0xfffffffb: "go12", 0xfffffffa: "go116", 0xfffffff0: "go118", 0xfffffff1: "go120",
	} {
		must(os.WriteFile(os.Args[2]+"/"+out+"-tls-functions", seed(magic, fns), 0o644))
	}
	bi, err := f.Section(".go.buildinfo").Data()
	must(err)
	must(os.WriteFile(os.Args[2]+"/buildinfo-inline", bi, 0o644))
	// The pre-1.18 format: a pointer to a string header; go_tables reads pointers as offsets
	// into the input itself.
	old := append([]byte(nil), bi[:32]...)
	old[14], old[15] = 8, 0
	old = le.AppendUint64(old[:16], 32)
	old = append(old, make([]byte, 8)...)
	old = le.AppendUint64(old, 48)
	old = le.AppendUint64(old, 8)
	old = append(old, "go1.16.5"...)
	must(os.WriteFile(os.Args[2]+"/buildinfo-pointer", old, 0o644))
}

const textStart = 0x401000

func seed(magic uint32, fns []fn) []byte {
	old := magic == 0xfffffffb || magic == 0xfffffffa
	field := 4
	if old {
		field = 8
	}
	put := func(b []byte, v uint64) {
		if field == 8 {
			le.PutUint64(b, v)
		} else {
			le.PutUint32(b, uint32(v))
		}
	}
	words := map[uint32]int{0xfffffffb: 1, 0xfffffffa: 7, 0xfffffff0: 8, 0xfffffff1: 8}[magic]
	t := make([]byte, 8+8*words)
	le.PutUint32(t, magic)
	t[6], t[7] = 1, 8
	le.PutUint64(t[8:], uint64(len(fns)))
	tabSize := (2*len(fns) + 1) * field
	functab := len(t)
	if magic == 0xfffffffb {
		t = append(t, make([]byte, tabSize)...) // 1.2: the functab right after the header
	}
	namesAt := len(t)
	var nameoffs []int
	for _, f := range fns {
		off := len(t) - namesAt
		if magic == 0xfffffffb {
			off = len(t) // 1.2: from the table start
		}
		nameoffs = append(nameoffs, off)
		t = append(t, f.name...)
		t = append(t, 0)
	}
	if magic != 0xfffffffb {
		functab = len(t)
		t = append(t, make([]byte, tabSize)...)
	}
	switch magic {
	case 0xfffffffa:
		le.PutUint64(t[8+2*8:], uint64(namesAt))
		le.PutUint64(t[8+6*8:], uint64(functab))
	case 0xfffffff0, 0xfffffff1:
		le.PutUint64(t[8+2*8:], textStart)
		le.PutUint64(t[8+3*8:], uint64(namesAt))
		le.PutUint64(t[8+7*8:], uint64(functab))
	}
	base := functab
	if magic == 0xfffffffb {
		base = 0
	}
	var code []byte
	for i, f := range fns {
		entry := uint64(len(code))
		if old {
			entry += textStart
		}
		rec := len(t)
		t = append(t, make([]byte, field+4)...)
		put(t[rec:], entry)
		le.PutUint32(t[rec+field:], uint32(nameoffs[i]))
		t = append(t, f.rest...)
		put(t[functab+2*i*field:], entry)
		put(t[functab+(2*i+1)*field:], uint64(rec-base))
		code = append(code, f.code...)
	}
	end := uint64(len(code))
	if old {
		end += textStart
	}
	put(t[functab+2*len(fns)*field:], end)
	out := le.AppendUint32(nil, uint32(len(t)))
	out = append(out, t...)
	return append(out, code...)
}
