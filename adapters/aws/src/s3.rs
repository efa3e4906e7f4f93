//! `ObjectStore` on Amazon S3.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use iris_core::keys::ObjectKey;
use iris_core::ports::{ObjectInfo, ObjectMetadata, ObjectStore, PortError};
use iris_core::time::Timestamp;

use crate::error::port_error;

const BACKEND: &str = "s3";
/// Objects larger than this are written with a multipart upload, in parts of this size.
pub const MULTIPART_PART_BYTES: usize = 16 << 20;

pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3ObjectStore {
    pub fn new(client: aws_sdk_s3::Client, bucket: &str) -> S3ObjectStore {
        S3ObjectStore { client, bucket: bucket.to_owned() }
    }

    async fn put_multipart(
        &self,
        key: &ObjectKey,
        body: Vec<u8>,
        metadata: HashMap<String, String>,
    ) -> Result<(String, Option<String>), PortError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .set_metadata(Some(metadata))
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let mut parts = Vec::new();
        for (index, chunk) in body.chunks(MULTIPART_PART_BYTES).enumerate() {
            let number = index as i32 + 1;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key.as_str())
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await;
            match uploaded {
                Ok(part) => parts.push(
                    CompletedPart::builder().set_e_tag(part.e_tag().map(str::to_owned)).part_number(number).build(),
                ),
                Err(error) => {
                    let _ = self
                        .client
                        .abort_multipart_upload()
                        .bucket(&self.bucket)
                        .key(key.as_str())
                        .upload_id(&upload_id)
                        .send()
                        .await;
                    return Err(port_error(BACKEND, error));
                }
            }
        }
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key.as_str())
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok((unquote(completed.e_tag()), completed.version_id().map(str::to_owned)))
    }
}

fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

fn millis(time: Option<&aws_sdk_s3::primitives::DateTime>) -> Timestamp {
    Timestamp::from_epoch_millis(time.and_then(|t| t.to_millis().ok()).unwrap_or(0))
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn put(&self, key: &ObjectKey, body: Vec<u8>, metadata: &ObjectMetadata) -> Result<ObjectInfo, PortError> {
        let size = body.len() as u64;
        let user_metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let (etag, version_id) = if body.len() > MULTIPART_PART_BYTES {
            self.put_multipart(key, body, user_metadata).await?
        } else {
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key.as_str())
                .set_metadata(Some(user_metadata))
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| port_error(BACKEND, e))?;
            (unquote(put.e_tag()), put.version_id().map(str::to_owned))
        };
        Ok(ObjectInfo {
            key: key.clone(),
            size,
            etag,
            version_id,
            metadata: metadata.clone(),
            last_modified: Timestamp::now(),
        })
    }

    async fn get(&self, key: &ObjectKey) -> Result<Vec<u8>, PortError> {
        let object = match self.client.get_object().bucket(&self.bucket).key(key.as_str()).send().await {
            Ok(object) => object,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(PortError::NotFound(key.to_string()));
            }
            Err(error) => return Err(port_error(BACKEND, error)),
        };
        let bytes = object.body.collect().await.map_err(|e| PortError::unavailable(BACKEND, e))?;
        Ok(bytes.into_bytes().to_vec())
    }

    async fn get_matching(&self, key: &ObjectKey, etag: &str, max_bytes: u64) -> Result<Vec<u8>, PortError> {
        let request = self.client.get_object().bucket(&self.bucket).key(key.as_str()).if_match(format!("\"{etag}\""));
        let mut object = match request.send().await {
            Ok(object) => object,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(PortError::NotFound(key.to_string()));
            }
            Err(error) if crate::error::error_code(&error) == Some("PreconditionFailed") => {
                return Err(PortError::PreconditionFailed(key.to_string()));
            }
            Err(error) => return Err(port_error(BACKEND, error)),
        };
        if object.content_length().is_some_and(|length| length.max(0) as u64 > max_bytes) {
            return Err(PortError::TooLarge { limit: max_bytes });
        }
        // Streamed, so a body longer than it said stops at the limit too.
        let mut bytes = Vec::with_capacity(object.content_length().unwrap_or(0).clamp(0, 1 << 30) as usize);
        while let Some(chunk) = object.body.try_next().await.map_err(|e| PortError::unavailable(BACKEND, e))? {
            if (bytes.len() + chunk.len()) as u64 > max_bytes {
                return Err(PortError::TooLarge { limit: max_bytes });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, PortError> {
        match self.client.head_object().bucket(&self.bucket).key(key.as_str()).send().await {
            Ok(head) => Ok(Some(ObjectInfo {
                key: key.clone(),
                size: head.content_length().unwrap_or(0).max(0) as u64,
                etag: unquote(head.e_tag()),
                version_id: head.version_id().map(str::to_owned),
                metadata: head
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
                last_modified: millis(head.last_modified()),
            })),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
            Err(error) => Err(port_error(BACKEND, error)),
        }
    }

    /// Listing returns no user metadata (S3 does not); `head` an object for it.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, PortError> {
        let mut objects = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_continuation_token(continuation.take())
                .send()
                .await
                .map_err(|e| port_error(BACKEND, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| ObjectKey::parse(k).ok()) else { continue };
                objects.push(ObjectInfo {
                    key,
                    size: object.size().unwrap_or(0).max(0) as u64,
                    etag: unquote(object.e_tag()),
                    version_id: None,
                    metadata: ObjectMetadata::new(),
                    last_modified: millis(object.last_modified()),
                });
            }
            match page.next_continuation_token() {
                Some(token) if page.is_truncated().unwrap_or(false) => continuation = Some(token.to_owned()),
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| port_error(BACKEND, e))?;
        Ok(())
    }
}
