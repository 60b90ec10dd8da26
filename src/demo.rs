//! `sftpgw demo`: the gateway plus the embedded S3 server, with a generated config and key.
