//! Status: one snapshot model of the gateway, the control socket that serves it, and its
//! text and JSON renderings for `sftpgw status`.
