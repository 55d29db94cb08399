//! The W3C Trace Context `traceparent` value
//! (<https://www.w3.org/TR/trace-context/#traceparent-header>): what links
//! a call's spans across the client, the control plane, the agent and the
//! function. Parsed strictly: it comes from clients and is handed to
//! functions, so anything but the exact form is dropped.

use std::fmt;

/// `00-<trace id, 32 hex>-<parent span id, 16 hex>-<flags, 2 hex>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// Length of a version-00 value.
const LEN: usize = 55;
const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// The value, or `None` if it is not a valid `traceparent`: wrong
    /// length or separators, upper-case or non-hex digits, version `ff`,
    /// all-zero ids. A later version is read by its version-00 prefix, as
    /// the specification asks, when what follows starts with `-`.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let bytes = value.as_bytes();
        if bytes.len() < LEN {
            return None;
        }
        let version = lower_hex::<1>(&bytes[0..2])?[0];
        match version {
            0 if bytes.len() != LEN => return None,
            0xff => return None,
            0 => {}
            _ if bytes.len() > LEN && bytes[LEN] != b'-' => return None,
            _ => {}
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_id = lower_hex::<16>(&bytes[3..35])?;
        let span_id = lower_hex::<8>(&bytes[36..52])?;
        let flags = lower_hex::<1>(&bytes[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, not sampled: the ids a call carries when neither its
    /// client nor this platform records a trace (they still correlate the
    /// function's own telemetry with the call).
    pub fn new_root() -> TraceParent {
        loop {
            let trace_id: [u8; 16] = rand::random();
            let span_id: [u8; 8] = rand::random();
            if trace_id != [0; 16] && span_id != [0; 8] {
                return TraceParent {
                    trace_id,
                    span_id,
                    flags: 0,
                };
            }
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The same ids in AWS X-Ray's `_X_AMZN_TRACE_ID` form, for functions
    /// written for Lambda: `Root=1-<8 hex>-<24 hex>;Parent=<16 hex>;Sampled=<0|1>`.
    pub fn xray(&self) -> String {
        let trace = self.trace_id_hex();
        format!(
            "Root=1-{}-{};Parent={};Sampled={}",
            &trace[..8],
            &trace[8..],
            hex::encode(self.span_id),
            u8::from(self.sampled())
        )
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }
}

/// `N` bytes from `2N` lower-case hex digits.
fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N
        || !digits
            .iter()
            .all(|d| d.is_ascii_digit() || (b'a'..=b'f').contains(d))
    {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(digits, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(parsed.span_id), "00f067aa0ba902b7");
        assert!(parsed.sampled());
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(
            parsed.xray(),
            "Root=1-4bf92f35-77b34da6a3ce929d0e0e4736;Parent=00f067aa0ba902b7;Sampled=1"
        );
    }

    #[test]
    fn anything_but_the_exact_form_is_refused() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}",
        ];
        for value in bad {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_prefix() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        let parsed = TraceParent::parse(later).unwrap();
        assert_eq!(parsed.to_string(), EXAMPLE);
        assert_eq!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
    }

    #[test]
    fn a_new_root_is_valid_and_not_sampled() {
        let root = TraceParent::new_root();
        assert!(!root.sampled());
        assert_eq!(TraceParent::parse(&root.to_string()), Some(root));
        assert_ne!(TraceParent::new_root().trace_id, root.trace_id);
    }
}
