//! [`ObjectStore`](super::store::ObjectStore) over aws-sdk-s3.
