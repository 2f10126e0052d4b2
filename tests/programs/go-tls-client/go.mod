module enforcer.test/go-tls-client

go 1.17
