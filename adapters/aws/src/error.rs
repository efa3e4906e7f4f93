//! Mapping SDK errors onto `PortError`.
//!
//! Retryable (`PortError::Unavailable`): timeouts, connection failures, responses that could not
//! be read, HTTP 5xx and 429, throttling and a few codes AWS documents as transient (whatever
//! their status). Permanent (`PortError::Invalid`): every other 4xx — access denied, not found,
//! validation errors — and requests the SDK could not even build. A retryable error redelivers the
//! message after a backoff; a permanent one fails the job at once with `storage_error`.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use iris_core::ports::PortError;

/// Error codes that mean "slow down, or try again", across services, whatever the HTTP status.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    "TransactionInProgressException",
    "TransactionConflictException",
    "IDPCommunicationError",
    "ExpiredToken",
    "ExpiredTokenException",
];

/// What kind of failure an SDK error is, before its code and status are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The SDK could not build the request (a bug or bad input): retrying cannot help.
    Construction,
    /// No answer in time.
    Timeout,
    /// The request did not reach the service, or the connection broke.
    Dispatch,
    /// An answer came that could not be read.
    Response,
    /// The service answered with an error.
    Service,
}

/// Whether a failure is worth retrying: the one rule every adapter follows.
pub fn is_transient(kind: FailureKind, code: Option<&str>, http_status: Option<u16>) -> bool {
    match kind {
        FailureKind::Construction => false,
        FailureKind::Timeout | FailureKind::Dispatch | FailureKind::Response => true,
        FailureKind::Service => {
            code.is_some_and(|code| TRANSIENT_CODES.contains(&code))
                || http_status.is_some_and(|status| status >= 500 || status == 429)
        }
    }
}

pub fn port_error<E>(backend: &'static str, error: SdkError<E, HttpResponse>) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = DisplayErrorContext(&error).to_string();
    let kind = match &error {
        SdkError::ConstructionFailure(_) => FailureKind::Construction,
        SdkError::TimeoutError(_) => FailureKind::Timeout,
        SdkError::DispatchFailure(_) => FailureKind::Dispatch,
        SdkError::ResponseError(_) => FailureKind::Response,
        SdkError::ServiceError(_) => FailureKind::Service,
        // SdkError is non-exhaustive: an unknown kind is treated as transient, as the SDK's own
        // retry classifier does for transport-level failures.
        _ => FailureKind::Dispatch,
    };
    let status = error.raw_response().map(|response| response.status().as_u16());
    if is_transient(kind, error_code(&error), status) {
        PortError::Unavailable { backend, message }
    } else {
        PortError::Invalid { backend, message }
    }
}

/// The service error code of an SDK error, if it is one.
pub fn error_code<E, R>(error: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match error {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::get_object::GetObjectError;
    use aws_sdk_s3::primitives::SdkBody;
    use aws_smithy_runtime_api::http::StatusCode;

    use super::*;

    fn service_error(code: &str, status: u16) -> SdkError<GetObjectError, HttpResponse> {
        let error = GetObjectError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let response = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(error, response)
    }

    fn retryable(error: SdkError<GetObjectError, HttpResponse>) -> bool {
        port_error("s3", error).is_retryable()
    }

    #[test]
    fn server_errors_throttling_and_timeouts_are_retried() {
        assert!(retryable(service_error("InternalError", 500)));
        assert!(retryable(service_error("SomethingNew", 502)), "any 5xx, known code or not");
        assert!(retryable(service_error("SomethingNew", 503)));
        assert!(retryable(service_error("SlowDown", 503)));
        assert!(retryable(service_error("TooManyRequests", 429)), "429 whatever the code");
        assert!(retryable(service_error("ThrottlingException", 400)), "DynamoDB throttles with a 400");
        assert!(retryable(service_error("ProvisionedThroughputExceededException", 400)));
        assert!(retryable(service_error("RequestTimeout", 400)), "S3's RequestTimeout is a 400");
        assert!(retryable(service_error("ExpiredToken", 400)), "credentials are refreshed on the next try");
        assert!(retryable(SdkError::timeout_error("no answer")));
    }

    #[test]
    fn access_denied_not_found_and_bad_requests_are_permanent() {
        for (code, status) in [
            ("AccessDenied", 403),
            ("AccessDeniedException", 400),
            ("NoSuchBucket", 404),
            ("ResourceNotFoundException", 400),
            ("ValidationException", 400),
            ("InvalidArgument", 400),
            ("KMS.DisabledException", 400),
        ] {
            assert!(!retryable(service_error(code, status)), "{code} ({status})");
        }
        assert!(!retryable(SdkError::construction_failure("cannot build the request")));
    }

    #[test]
    fn the_rule_without_the_sdk() {
        assert!(is_transient(FailureKind::Dispatch, None, None));
        assert!(is_transient(FailureKind::Response, None, Some(200)));
        assert!(!is_transient(FailureKind::Service, None, Some(404)));
        assert!(!is_transient(FailureKind::Service, Some("Unknown"), None));
        assert!(is_transient(FailureKind::Service, None, Some(504)));
    }
}
