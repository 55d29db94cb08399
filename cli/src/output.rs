//! Where results go (stdout) and how failures become exit codes and
//! messages (stderr). The codes are documented in `faasctl --help`.

use std::borrow::Cow;
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
pub const EXIT_NOT_ALLOWED: u8 = 7;

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

pub use faas_client::code_name;

pub fn exit_code_for(code: Code) -> u8 {
    match code {
        Code::Ok => EXIT_OK,
        Code::InvalidArgument | Code::OutOfRange => EXIT_BAD_INPUT,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => EXIT_CONFLICT,
        Code::ResourceExhausted => EXIT_LIMIT,
        Code::Unauthenticated | Code::PermissionDenied => EXIT_NOT_ALLOWED,
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

/// Whether a character must not reach a terminal as is: C0 and C1
/// controls and DEL (ESC starts CSI and OSC sequences: cursor moves,
/// screen clears, OSC 52 clipboard writes; CR and BS overwrite what was
/// printed; BEL rings), and the invisible bidirectional overrides that make
/// text read other than it is. Newlines and tabs are layout and stay.
fn must_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Text faasctl did not write (names, messages, results, logs), made safe
/// for a terminal: every character of [`must_escape`] is shown as an
/// escape (`\x1b`, `\u{9b}`), so the user sees what was sent instead of
/// having their terminal act on it.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(must_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if !must_escape(c) {
            out.push(c);
        } else if c.is_ascii() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// The same for JSON text: serde_json escapes C0 controls inside strings
/// but writes DEL, C1 controls and bidirectional overrides raw; they can
/// only occur inside strings, where `\uXXXX` keeps the JSON valid.
fn escape_json_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(must_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if must_escape(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Server text for a terminal (kept for callers that format a message
/// before printing it).
pub fn printable(text: &str) -> String {
    escape_controls(text).into_owned()
}

/// Writes one result to stdout. Results are the only thing on stdout.
/// Always escaped: tables and results quote what functions and users
/// chose (names, results, error messages).
pub fn emit(text: &str) -> io::Result<()> {
    let text = escape_controls(text);
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes the bytes a function returned (a call's `result_base64`): as
/// they are into a pipe or a file (`faasctl invoke img > out.png`), as
/// their base64 on a terminal, which raw bytes could drive.
pub fn emit_bytes_result(result_json: &str) -> io::Result<()> {
    use base64::Engine;
    use std::io::IsTerminal;
    let text: String = serde_json::from_str(result_json).map_err(io::Error::other)?;
    if io::stdout().is_terminal() {
        emit(&text)?;
        eprintln!(
            "(the function returned bytes, shown in base64: redirect the output to get them)"
        );
        return Ok(());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .map_err(io::Error::other)?;
    let mut out = io::stdout().lock();
    out.write_all(&bytes)?;
    out.flush()
}

/// Writes a call's logs, control characters escaped (newlines and tabs
/// kept): a function's logs are its own text, and a pipe often ends in a
/// terminal too (`| less -R`, `| tail`), so raw bytes are never printed.
pub fn emit_logs(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(escape_controls(&String::from_utf8_lossy(bytes)).as_bytes())?;
    out.flush()
}

/// Joins log pieces split anywhere (even inside a character) into text
/// that is printed as soon as it is whole.
#[derive(Default)]
pub struct Utf8Pieces {
    pending: Vec<u8>,
}

impl Utf8Pieces {
    /// The bytes up to the last whole character; the rest waits for the
    /// next piece.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let keep = match std::str::from_utf8(&self.pending) {
            Ok(_) => 0,
            // Cut inside a character at the end: keep its first bytes.
            Err(e) if e.error_len().is_none() => self.pending.len() - e.valid_up_to(),
            Err(_) => 0,
        };
        let rest = self.pending.split_off(self.pending.len() - keep);
        std::mem::replace(&mut self.pending, rest)
    }

    /// Whatever is left (invalid bytes are shown as replacement marks).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

pub fn emit_json(value: &Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    let text = escape_json_controls(&text);
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// A line for the user, not a result: stderr. Escaped: errors and failure
/// reports quote server text and a function's logs.
pub fn note(text: &str) {
    let _ = writeln!(io::stderr().lock(), "{}", escape_controls(text));
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
    fn pieces_cut_inside_a_character_print_it_whole() {
        let text = "añb€".as_bytes();
        let mut pieces = Utf8Pieces::default();
        let mut out = Vec::new();
        for byte in text {
            out.extend(pieces.push(&[*byte]));
        }
        out.extend(pieces.finish());
        assert_eq!(out, text);
        assert_eq!(pieces.push(&text[..2]), b"a");
        assert_eq!(pieces.push(&text[2..]), &text[1..]);
    }

    #[test]
    fn control_characters_are_not_echoed() {
        assert_eq!(
            printable("bad \u{1b}[2J\r name\n\tok"),
            "bad \\x1b[2J\\x0d name\n\tok"
        );
    }

    /// OSC 52 asks the terminal to write the clipboard; CSI sequences move
    /// the cursor, recolour, clear the screen; C1 CSI (U+009B) is the
    /// one-character form; BEL ends an OSC; a bidi override reverses text.
    #[test]
    fn terminal_sequences_are_escaped() {
        let osc52 = "result \u{1b}]52;c;ZWNobyBwd25lZA==\u{7} done";
        assert_eq!(
            escape_controls(osc52),
            "result \\x1b]52;c;ZWNobyBwd25lZA==\\x07 done"
        );
        let csi = "\u{1b}[2J\u{1b}[H\u{1b}[31mred\u{1b}[0m \u{9b}1A \u{7f}";
        let escaped = escape_controls(csi);
        assert_eq!(
            escaped,
            "\\x1b[2J\\x1b[H\\x1b[31mred\\x1b[0m \\u{9b}1A \\x7f"
        );
        assert!(!escaped.chars().any(|c| c.is_control()));
        assert_eq!(escape_controls("abc\u{202e}fed"), "abc\\u{202e}fed");
        // Plain text, newlines and tabs pass untouched (and uncopied).
        assert!(matches!(escape_controls("a\n\tb é"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_stays_valid_once_escaped() {
        let value = serde_json::json!({"r": "x\u{1b}]52;c;aGk=\u{7}\u{9b}2J\u{202e}"});
        let text = serde_json::to_string_pretty(&value).unwrap();
        let escaped = escape_json_controls(&text);
        assert!(!escaped.chars().any(must_escape), "{escaped}");
        let back: Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn failure_reports_are_escaped_when_printed() {
        let call = Call {
            id: "c1".into(),
            status: CallStatus::Failed as i32,
            error: Some(CallError {
                reason: "error".into(),
                message: "boom\u{1b}]52;c;aGk=\u{7}".into(),
                log_tail: "line\r\u{1b}[1Aover\n".into(),
            }),
            ..Default::default()
        };
        let printed = escape_controls(&failure_report(&call)).into_owned();
        assert!(
            !printed.contains('\u{1b}') && !printed.contains('\r'),
            "{printed}"
        );
        assert!(printed.contains("boom\\x1b]52;c;aGk=\\x07"), "{printed}");
    }

    #[test]
    fn grpc_codes_map_to_exit_codes() {
        assert_eq!(exit_code_for(Code::InvalidArgument), 2);
        assert_eq!(exit_code_for(Code::Unauthenticated), 7);
        assert_eq!(exit_code_for(Code::PermissionDenied), 7);
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
    }
}
