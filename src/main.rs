//! The `sftpgw` command line.

fn main() {}
