//! The SFTP front end: SSH server (russh), authentication, and our own pipelined SFTP session
//! loop over russh-sftp's protocol types.
