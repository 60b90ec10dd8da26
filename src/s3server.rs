//! The embedded S3-compatible server (s3s-fs) used by `demo` and by the tests.
