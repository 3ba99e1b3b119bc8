//! What every request of a mount says besides its own parameters: the storage class and
//! server-side encryption of new objects, a customer key (SSE-C), requester pays and the
//! expected bucket owner. One SDK interceptor adds the headers, by operation, before signing,
//! so no call site can forget them. What to send is configuration (`config::RequestHeaders`,
//! with the key file's checks); how and where to send it is here.
//!
//! Non-obvious problems:
//! 1. Each header goes only where S3 takes it: the storage class and SSE on the requests that
//!    create objects (PutObject, CreateMultipartUpload, CopyObject); an SSE-C key on every
//!    request that reads or writes object bytes, and on copies also as the copy *source*'s
//!    key, since rename and chmod copy the object onto itself or a new key.
//! 2. The customer key never leaves config.rs and this module in text: `Debug` hides it, errors name the
//!    file and never its bytes, and the SDK's signing and orchestration traces (which print
//!    headers and answers unredacted) are capped at debug while a key is set (`daemon`).
//! 3. The key file must be the user's own and unreadable by others, as ssh does with keys:
//!    a key others can read is a key others have (`CustomerKey::from_file`).
//! 4. Some servers (SeaweedFS) send the key's MD5 header twice in an answer, which the SDK
//!    refuses to parse ("Failed to parse SSECustomerKeyMD5"): the first is kept.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

pub use crate::config::{CustomerKey, RequestHeaders, Sse, STORAGE_CLASSES};

impl Sse {
    pub(crate) fn algorithm(&self) -> &'static str {
        match self {
            Self::S3 => "AES256",
            Self::Kms(_) => "aws:kms",
            Self::KmsDsse(_) => "aws:kms:dsse",
        }
    }

    pub(crate) fn key_id(&self) -> Option<&str> {
        match self {
            Self::S3 => None,
            Self::Kms(id) | Self::KmsDsse(id) => id.as_deref(),
        }
    }
}

/// The SSE-C headers: algorithm, key, the key's MD5.
const CUSTOMER_KEY: [&str; 3] = [
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-customer-key",
    "x-amz-server-side-encryption-customer-key-md5",
];

/// The same for a copy's source.
const COPY_SOURCE_CUSTOMER_KEY: [&str; 3] = [
    "x-amz-copy-source-server-side-encryption-customer-algorithm",
    "x-amz-copy-source-server-side-encryption-customer-key",
    "x-amz-copy-source-server-side-encryption-customer-key-md5",
];

/// Operations that create an object from what they send or copy.
fn creates(op: &str) -> bool {
    matches!(op, "PutObject" | "CreateMultipartUpload" | "CopyObject")
}

/// Operations that send or receive an object's bytes (SSE-C needs the key for them).
fn touches_bytes(op: &str) -> bool {
    creates(op)
        || matches!(
            op,
            "GetObject"
                | "HeadObject"
                | "UploadPart"
                | "UploadPartCopy"
                | "CompleteMultipartUpload"
        )
}

impl RequestHeaders {
    /// True when no header is added.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The headers for operation `op`, as (name, value).
    pub fn for_operation(&self, op: &str) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if creates(op) {
            if let Some(class) = &self.storage_class {
                out.push(("x-amz-storage-class", class.clone()));
            }
            if let Some(sse) = &self.sse {
                out.push(("x-amz-server-side-encryption", sse.algorithm().to_string()));
                if let Some(id) = sse.key_id() {
                    out.push((
                        "x-amz-server-side-encryption-aws-kms-key-id",
                        id.to_string(),
                    ));
                }
            }
        }
        if let Some(key) = self.customer_key.as_ref().filter(|_| touches_bytes(op)) {
            // CompleteMultipartUpload and the copies' destinations take the same three.
            let values = [
                "AES256".to_string(),
                key.key_b64.clone(),
                key.md5_b64.clone(),
            ];
            out.extend(CUSTOMER_KEY.into_iter().zip(values.clone()));
            if matches!(op, "CopyObject" | "UploadPartCopy") {
                out.extend(COPY_SOURCE_CUSTOMER_KEY.into_iter().zip(values));
            }
        }
        if self.requester_pays {
            out.push(("x-amz-request-payer", "requester".to_string()));
        }
        if let Some(owner) = &self.expected_owner {
            out.push(("x-amz-expected-bucket-owner", owner.clone()));
            if matches!(op, "CopyObject" | "UploadPartCopy") {
                out.push(("x-amz-source-expected-bucket-owner", owner.clone()));
            }
        }
        out
    }
}

impl Intercept for RequestHeaders {
    fn name(&self) -> &'static str {
        "bucketfs::store::headers::RequestHeaders"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let op = cfg.load::<Metadata>().map_or("", Metadata::name);
        let headers = context.request_mut().headers_mut();
        for (name, value) in self.for_operation(op) {
            headers.insert(name, value);
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if self.customer_key.is_some() {
            let headers = context.response_mut().headers_mut();
            for name in [
                "x-amz-server-side-encryption-customer-key-md5",
                "x-amz-server-side-encryption-customer-algorithm",
            ] {
                if headers.get_all(name).nth(1).is_some() {
                    let first = headers.get(name).map(str::to_string);
                    headers.remove(name);
                    if let Some(first) = first {
                        headers.insert(name, first);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &RequestHeaders, op: &str) -> Vec<&'static str> {
        h.for_operation(op).into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn storage_class_and_sse_go_on_what_creates_objects() {
        let h = RequestHeaders {
            storage_class: Some("STANDARD_IA".into()),
            sse: Some(Sse::Kms(Some("alias/k".into()))),
            ..RequestHeaders::default()
        };
        for op in ["PutObject", "CreateMultipartUpload", "CopyObject"] {
            assert_eq!(
                h.for_operation(op),
                vec![
                    ("x-amz-storage-class", "STANDARD_IA".to_string()),
                    ("x-amz-server-side-encryption", "aws:kms".to_string()),
                    (
                        "x-amz-server-side-encryption-aws-kms-key-id",
                        "alias/k".to_string()
                    ),
                ],
                "{op}"
            );
        }
        for op in [
            "GetObject",
            "UploadPart",
            "UploadPartCopy",
            "ListObjectsV2",
            "HeadBucket",
        ] {
            assert!(h.for_operation(op).is_empty(), "{op}");
        }
    }

    #[test]
    fn a_customer_key_goes_on_every_request_with_bytes_and_on_copy_sources() {
        let key = CustomerKey::from_bytes(&[7u8; 32]).unwrap();
        let h = RequestHeaders {
            customer_key: Some(key.clone()),
            ..RequestHeaders::default()
        };
        for op in ["GetObject", "HeadObject", "PutObject", "UploadPart"] {
            assert_eq!(names(&h, op).len(), 3, "{op}");
        }
        assert_eq!(names(&h, "CopyObject").len(), 6);
        assert_eq!(names(&h, "UploadPartCopy").len(), 6);
        assert!(names(&h, "ListObjectsV2").is_empty());
        assert!(names(&h, "DeleteObject").is_empty());
        // The same key raw or in base64; its MD5 as S3 wants it.
        let text = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]);
        assert_eq!(
            CustomerKey::from_bytes(format!("{text}\n").as_bytes()),
            Some(key.clone())
        );
        assert_eq!(key.md5_b64.len(), 24);
        assert!(CustomerKey::from_bytes(b"short").is_none());
        assert!(CustomerKey::from_bytes(&[1u8; 31]).is_none());
        assert_eq!(format!("{key:?}"), "CustomerKey(hidden)");
    }

    #[test]
    fn requester_pays_and_the_owner_go_everywhere() {
        let h = RequestHeaders {
            requester_pays: true,
            expected_owner: Some("123456789012".into()),
            ..RequestHeaders::default()
        };
        assert_eq!(
            names(&h, "ListObjectsV2"),
            vec!["x-amz-request-payer", "x-amz-expected-bucket-owner"]
        );
        assert_eq!(
            names(&h, "CopyObject"),
            vec![
                "x-amz-request-payer",
                "x-amz-expected-bucket-owner",
                "x-amz-source-expected-bucket-owner"
            ]
        );
    }

    #[test]
    fn key_files_must_be_private_and_the_users() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [9u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        let err = CustomerKey::from_file(&path, uid).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(CustomerKey::from_file(&path, uid).is_ok());
        let err = CustomerKey::from_file(&path, uid + 1).unwrap_err();
        assert!(err.contains("belongs to uid"), "{err}");
        std::fs::write(&path, b"not a key").unwrap();
        let err = CustomerKey::from_file(&path, uid).unwrap_err();
        assert!(
            err.contains("no 32-byte key") && !err.contains("not a key"),
            "{err}"
        );
    }
}
