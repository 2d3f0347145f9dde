//! Logs: JSON that Cloud Logging reads (`severity`, `message`, `time`), or
//! text for humans. Logs go to stderr.
//!
//! Nothing in the sidecar logs a request's headers, so no token can reach a
//! log line; decisions log the principal and the reason code only.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Cloud Logging's severity for a tracing level.
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        // Cloud Logging has no TRACE.
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// One JSON object per event: `time`, `severity`, `message`, `target`, the
/// current span's name, then the event's fields under their own names
/// (dotted names such as `auth.reason` stay as they are).
#[derive(Debug, Clone, Copy, Default)]
pub struct CloudLoggingJson;

impl<S, N> FormatEvent<S, N> for CloudLoggingJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));

        let mut out = Map::new();
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        out.insert("time".into(), Value::String(time));
        out.insert("severity".into(), severity(meta.level()).into());
        out.insert(
            "message".into(),
            fields
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        out.insert("target".into(), meta.target().into());
        if let Some(span) = ctx.lookup_current() {
            out.insert("span".into(), span.name().into());
        }
        for (k, v) in fields {
            out.entry(k).or_insert(v);
        }
        writeln!(writer, "{}", Value::Object(out))
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Installs the global subscriber. `filter` is an `EnvFilter` directive
/// (`RUST_LOG` syntax); `info` when `None`.
pub fn init(format: LogFormat, filter: Option<&str>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter.unwrap_or("info"))
        .map_err(|e| anyhow::anyhow!("invalid log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder.event_format(CloudLoggingJson).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(f: impl FnOnce()) -> Vec<Value> {
        let buf = Buf::default();
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .event_format(CloudLoggingJson)
            .with_writer(move || b.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn cloud_logging_fields() {
        let lines = capture(|| {
            let span = tracing::info_span!("request");
            let _g = span.enter();
            tracing::info!(
                auth.principal = "user:a@b.com",
                auth.reason = "allowed",
                n = 3u64,
                "decision"
            );
            tracing::warn!(error = %"boom", "upstream request failed");
            tracing::error!("bad");
            tracing::debug!("detail");
        });
        assert_eq!(lines.len(), 4);
        let first = &lines[0];
        assert_eq!(first["severity"], "INFO");
        assert_eq!(first["message"], "decision");
        assert_eq!(first["auth.principal"], "user:a@b.com");
        assert_eq!(first["auth.reason"], "allowed");
        assert_eq!(first["n"], 3);
        assert_eq!(first["span"], "request");
        assert!(first["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["severity"], "WARNING");
        assert_eq!(lines[1]["error"], "boom");
        assert_eq!(lines[2]["severity"], "ERROR");
        assert_eq!(lines[3]["severity"], "DEBUG");
    }
}
