//! The embedded S3 server seen from a test: a plain aws-sdk-s3 client of it and the objects its
//! bucket holds. Owns no server: the caller starts it (directly or through the `Harness`).
//! May use only the library's public API; not the spool, the drain or the daemon.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use sftpgw::s3server::{S3Server, test_s3_config};

/// A client of `server` with the server's own keys, for looking at (and changing) the bucket
/// behind the gateway's back.
pub fn client(server: &S3Server) -> aws_sdk_s3::Client {
    let cfg = test_s3_config(server);
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            cfg.access_key_id,
            cfg.secret_access_key,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The bytes of object `key` in `server`'s bucket, or None if the GET fails (no such key).
pub async fn object(server: &S3Server, key: &str) -> Option<Vec<u8>> {
    let out = client(server)
        .get_object()
        .bucket(test_s3_config(server).bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    Some(
        out.body
            .collect()
            .await
            .expect("body")
            .into_bytes()
            .to_vec(),
    )
}

/// Starts an embedded S3 server on loopback with its root in `dir/s3`.
pub async fn start(dir: &std::path::Path) -> S3Server {
    S3Server::start(sftpgw::s3server::S3ServerConfig::loopback(dir.join("s3")))
        .await
        .expect("s3")
}
