//! Where results go (stdout) and how failures become exit codes and
//! messages (stderr). The codes are documented in `faasctl --help`.

use std::io::{self, Write};

use faas_proto::v1::{Call, CallStatus};
use serde_json::Value;
use tonic::Code;

use crate::format::call_status_name;

pub const EXIT_OK: u8 = 0;
pub const EXIT_CALL_FAILED: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_UNAVAILABLE: u8 = 4;
pub const EXIT_CONFLICT: u8 = 5;
pub const EXIT_LIMIT: u8 = 6;

/// A problem with what the user gave us, found before any RPC.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The call ran and ended FAILED or TIMEOUT (or, defensively, in a status
/// that is not final). Its details were already printed.
#[derive(Debug, thiserror::Error)]
#[error("call {id} {status}")]
pub struct CallNotSucceeded {
    pub id: String,
    pub status: String,
}

/// The gRPC code as written in the proto and in gRPC docs (NOT_FOUND), which
/// is what users search for; tonic's Display is a sentence.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::Ok => EXIT_OK,
        Code::InvalidArgument | Code::OutOfRange => EXIT_BAD_INPUT,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => EXIT_CONFLICT,
        Code::ResourceExhausted => EXIT_LIMIT,
        _ => EXIT_UNAVAILABLE,
    }
}

/// The exit code and the stderr message for an error that ended a command;
/// the message is None when the details were already printed.
pub fn describe_failure(error: &anyhow::Error) -> (u8, Option<String>) {
    for cause in error.chain() {
        if cause.downcast_ref::<CallNotSucceeded>().is_some() {
            return (EXIT_CALL_FAILED, None);
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            // tonic reports its own client-side deadline (--rpc-timeout) as
            // CANCELLED "Timeout expired"; name it for what it is.
            if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
                let message = "error: DEADLINE_EXCEEDED: no reply within --rpc-timeout".to_string();
                return (exit_code_for(Code::DeadlineExceeded), Some(message));
            }
            let message = format!(
                "error: {}: {}",
                code_name(status.code()),
                printable(status.message())
            );
            return (exit_code_for(status.code()), Some(message));
        }
        if cause.downcast_ref::<BadInput>().is_some()
            || cause.downcast_ref::<crate::pack::PackError>().is_some()
        {
            return (EXIT_BAD_INPUT, Some(format!("error: {error:#}")));
        }
    }
    // Connection failures and anything unforeseen: "the platform is not
    // answering properly", which is what code 4 means to a script.
    (EXIT_UNAVAILABLE, Some(format!("error: {error:#}")))
}

/// Server text for a terminal: control characters other than newlines and
/// tabs (an escape sequence echoed from a corrupt upload, say) are replaced.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// Writes one result to stdout. Results are the only thing on stdout.
pub fn emit(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

pub fn emit_bytes(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

pub fn emit_json(value: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    emit(&text)
}

/// A line for the user, not a result: stderr.
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

pub fn is_final(status: i32) -> bool {
    matches!(
        CallStatus::try_from(status),
        Ok(CallStatus::Succeeded | CallStatus::Failed | CallStatus::Timeout)
    )
}

/// What to print on stderr for a call that did not succeed: the reason and
/// message, then the end of its logs, which is where the traceback is.
pub fn failure_report(call: &Call) -> String {
    let mut text = match &call.error {
        Some(error) if !error.reason.is_empty() || !error.message.is_empty() => {
            format!("error: {}: {}", error.reason, error.message)
        }
        _ => format!(
            "error: call {} ended with status {}",
            call.id,
            call_status_name(call.status)
        ),
    };
    if let Some(error) = &call.error {
        let tail = error.log_tail.trim_end();
        if !tail.is_empty() {
            text.push_str(&format!("\n--- log tail of call {} ---\n{tail}", call.id));
        }
    }
    text
}

/// Ok when the call succeeded; otherwise prints its failure on stderr and
/// returns the error that makes the process exit with code 1.
pub fn check_succeeded(call: &Call) -> anyhow::Result<()> {
    if call.status == CallStatus::Succeeded as i32 {
        return Ok(());
    }
    note(&failure_report(call));
    Err(CallNotSucceeded {
        id: call.id.clone(),
        status: call_status_name(call.status),
    }
    .into())
}

/// A result JSON text printed for humans and scripts alike: pretty, or as
/// is if it does not parse.
pub fn pretty_json_text(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => serde_json::to_string_pretty(&value).unwrap_or_else(|_| text.to_string()),
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_proto::v1::CallError;

    #[test]
    fn control_characters_are_not_echoed() {
        assert_eq!(
            printable("bad \u{1b}[2J\r name\n\tok"),
            "bad \u{fffd}[2J\u{fffd} name\n\tok"
        );
    }

    #[test]
    fn grpc_codes_map_to_exit_codes() {
        assert_eq!(exit_code_for(Code::InvalidArgument), 2);
        assert_eq!(exit_code_for(Code::NotFound), 3);
        assert_eq!(exit_code_for(Code::Unavailable), 4);
        assert_eq!(exit_code_for(Code::DeadlineExceeded), 4);
        assert_eq!(exit_code_for(Code::Internal), 4);
        assert_eq!(exit_code_for(Code::AlreadyExists), 5);
        assert_eq!(exit_code_for(Code::FailedPrecondition), 5);
        assert_eq!(exit_code_for(Code::ResourceExhausted), 6);
    }

    #[test]
    fn failures_are_described() {
        let status = tonic::Status::not_found("function \"nope\" not found");
        let error = anyhow::Error::from(status).context("invoke nope");
        let (code, message) = describe_failure(&error);
        assert_eq!(code, 3);
        assert_eq!(
            message.unwrap(),
            "error: NOT_FOUND: function \"nope\" not found"
        );

        let error = anyhow::Error::from(tonic::Status::cancelled("Timeout expired"));
        let (code, message) = describe_failure(&error);
        assert_eq!(code, 4);
        assert!(message.unwrap().contains("DEADLINE_EXCEEDED"));

        let error = anyhow::Error::from(BadInput("cannot read x".into()));
        assert_eq!(describe_failure(&error).0, 2);

        let error = anyhow::Error::from(CallNotSucceeded {
            id: "c".into(),
            status: "failed".into(),
        });
        assert_eq!(describe_failure(&error), (1, None));

        let error = anyhow::anyhow!("something odd");
        assert_eq!(describe_failure(&error).0, 4);
    }

    #[test]
    fn failure_report_has_reason_and_log_tail() {
        let call = Call {
            id: "c1".into(),
            status: CallStatus::Failed as i32,
            error: Some(CallError {
                reason: "error".into(),
                message: "RuntimeError: boom: test".into(),
                log_tail: "about to fail\nTraceback ...\n".into(),
            }),
            ..Default::default()
        };
        let text = failure_report(&call);
        assert!(
            text.starts_with("error: error: RuntimeError: boom: test\n"),
            "{text}"
        );
        assert!(text.ends_with("about to fail\nTraceback ..."), "{text}");

        let bare = Call {
            id: "c2".into(),
            status: CallStatus::Timeout as i32,
            ..Default::default()
        };
        assert_eq!(
            failure_report(&bare),
            "error: call c2 ended with status timeout"
        );
    }

    #[test]
    fn result_text_is_pretty_when_json() {
        assert_eq!(pretty_json_text(r#"{"a":1}"#), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json_text("not json"), "not json");
        assert!(is_final(CallStatus::Timeout as i32));
        assert!(!is_final(CallStatus::Running as i32));
    }
}
