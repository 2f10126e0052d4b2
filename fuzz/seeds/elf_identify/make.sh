#!/bin/sh
# Regenerates the ELF seeds of the elf_identify fuzz target (Debian bookworm, gcc 12, binutils
# 2.40; needs gcc-multilib for the i386 one). Each is a few KiB: tiny shared objects (or one
# static executable) whose symbols drive enforcer's identification as deep as it goes: profile
# matching, exclusion, symbol versions, aliases, IFUNC, .symtab fallback, 32-bit. The function
# bodies are irrelevant; only symbols, sections and segments matter.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Small, reproducible output: no build id, no .comment padding, 4 KiB pages, text in the first
# segment, no relro; -s strips .symtab (.dynsym stays).
small="-Os -fPIC -nostdlib -fno-asynchronous-unwind-tables -Wl,--build-id=none -Wl,-z,norelro
       -Wl,-z,noseparate-code -Wl,-z,max-page-size=0x1000 -Wl,--hash-style=gnu"

fns() { for f in "$@"; do echo "int $f(void) { return __LINE__; }"; done; }

# OpenSSL 3 shape: versioned symbols, SSL_write@OPENSSL_1_1_0 kept next to SSL_write@@OPENSSL_3.0.0,
# SSL_accept an alias of SSL_connect.
cat > "$tmp/ossl3.c" <<'C'
int OPENSSL_init_ssl(void) { return 1; }
void *SSL_CTX_new(void) { return 0; }
int ssl_write_new(void) { return 2; }
int ssl_write_old(void) { return 3; }
__asm__(".symver ssl_write_new,SSL_write@@OPENSSL_3.0.0");
__asm__(".symver ssl_write_old,SSL_write@OPENSSL_1_1_0");
int SSL_write_ex(void) { return 4; }
int SSL_read(void) { return 5; }
int SSL_read_ex(void) { return 6; }
int SSL_do_handshake(void) { return 7; }
int SSL_connect(void) { return 8; }
int SSL_accept(void) __attribute__((alias("SSL_connect")));
C
cat > "$tmp/ossl3.map" <<'M'
OPENSSL_1_1_0 { global: OPENSSL_init_ssl; SSL_write; SSL_CTX_new; SSL_write_ex; SSL_read; SSL_read_ex;
  SSL_do_handshake; SSL_connect; SSL_accept; local: *; };
OPENSSL_3.0.0 { } OPENSSL_1_1_0;
M
# shellcheck disable=SC2086
gcc $small -shared -Wl,--version-script="$tmp/ossl3.map" -s -o openssl3.so "$tmp/ossl3.c"

# OpenSSL 1.0 shape (SSL_library_init + SSL_CTX_ctrl, no *_ex).
fns SSL_library_init SSL_CTX_ctrl SSL_CTX_new SSL_write SSL_read SSL_connect SSL_accept \
    SSL_do_handshake > "$tmp/ossl10.c"
gcc $small -shared -s -o openssl10.so "$tmp/ossl10.c"

# GnuTLS shape.
fns gnutls_global_init gnutls_check_version gnutls_record_send gnutls_record_recv \
    gnutls_handshake > "$tmp/gnutls.c"
gcc $small -shared -s -o gnutls.so "$tmp/gnutls.c"

# GnuTLS's OpenSSL compatibility layer: OpenSSL names defined, gnutls_* only imported: not TLS.
{ fns SSL_library_init SSL_CTX_new SSL_write SSL_read SSL_connect
  echo 'extern int gnutls_record_send(void); int f(void) { return gnutls_record_send(); }'; } \
    > "$tmp/compat.c"
gcc $small -shared -s -o gnutls-openssl-compat.so "$tmp/compat.c"

# BoringSSL shape: OpenSSL's identifying symbols plus an excluding one: not OpenSSL.
fns OPENSSL_init_ssl SSL_CTX_new SSL_write SSL_read SSL_CTX_set_select_certificate_cb \
    > "$tmp/boring.c"
gcc $small -shared -s -o boringssl.so "$tmp/boring.c"

# SSL_write as an IFUNC (not probed), the rest plain.
cat > "$tmp/ifunc.c" <<'C'
int OPENSSL_init_ssl(void) { return 1; }
void *SSL_CTX_new(void) { return 0; }
static int impl(void) { return 2; }
static void *resolve(void) { return impl; }
int SSL_write(void) __attribute__((ifunc("resolve")));
int SSL_read(void) { return 3; }
C
gcc $small -shared -s -o ifunc.so "$tmp/ifunc.c"

# Statically linked, unstripped executable: no .dynsym, found through .symtab.
{ fns OPENSSL_init_ssl SSL_CTX_new SSL_write SSL_read SSL_connect
  echo 'void _start(void) { for (;;) ; }'; } > "$tmp/static.c"
gcc $small -static -fno-pie -no-pie -o openssl-static "$tmp/static.c"

# 32-bit (ELFCLASS32).
fns OPENSSL_init_ssl SSL_CTX_new SSL_write SSL_read SSL_connect > "$tmp/i386.c"
gcc $small -m32 -shared -s -o openssl-i386.so "$tmp/i386.c"

# The same libraries without section headers (what `sstrip` leaves: the loader needs only the
# program headers), so the fuzzer starts from files read through PT_DYNAMIC alone:
# e_shoff, e_shnum and e_shstrndx zeroed (ELF64 at 40/60/62, ELF32 at 32/48/50).
sstripped() {
    cp "$1" "$2"
    if [ "$(od -An -tu1 -j4 -N1 "$1" | tr -d ' ')" = 2 ]; then
        set -- "$1" "$2" 40 8 60
    else
        set -- "$1" "$2" 32 4 48
    fi
    dd if=/dev/zero of="$2" bs=1 seek="$3" count="$4" conv=notrunc status=none
    dd if=/dev/zero of="$2" bs=1 seek="$5" count=4 conv=notrunc status=none
}
for lib in openssl3 openssl10 gnutls openssl-i386; do
    sstripped "$lib.so" "$lib-sstripped.so"
done

ls -l ./*.so openssl-static
