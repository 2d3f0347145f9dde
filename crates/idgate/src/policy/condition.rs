//! IAM conditions: CEL expressions over `request.time`, `request.path`,
//! `request.host` and `request.method`, compiled once at load by the `cel`
//! crate and checked so that a typo is a configuration error rather than a
//! condition that silently never holds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, MapExpr, StructExpr};
use cel::objects::Key;
use cel::parser::ParseErrors;
use cel::{Context, Env, ExecutionError, Program, Value};

use super::RequestContext;
use super::document::ConditionSpec;

/// The fields of `request` a condition may read.
pub const REQUEST_FIELDS: [&str; 4] = ["time", "path", "host", "method"];

/// CEL's type identifiers (`type(x) == string`): harmless to mention.
const TYPE_NAMES: [&str; 11] = [
    "bool",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// The standard CEL environment, built once: building it registers every
/// overload of the standard library, which is not free.
pub(super) fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// A compiled condition.
pub(super) struct Condition {
    /// How decisions name it: the title, else the expression.
    pub name: Arc<str>,
    pub expression: String,
    program: Program,
    /// Whether it reads `request.path`: then it does not hold for a path
    /// that an upstream could read as another ([`ambiguous_path`]).
    reads_path: bool,
    /// Said at load: the expression negates a test of the path.
    pub warning: Option<String>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("name", &self.name)
            .field("expression", &self.expression)
            .finish_non_exhaustive()
    }
}

/// What evaluating a condition gave.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    True,
    False,
    /// Failed at evaluation, or gave something other than a bool: IAM
    /// treats both as "does not hold", and so do we.
    Failed(String),
}

/// Longest expression accepted, in bytes. Conditions are written by
/// people; the bound keeps compiling cheap whatever a file holds.
const MAX_EXPRESSION_BYTES: usize = 4096;

/// Deepest expression tree accepted. Evaluation recurses once per level on
/// the thread of the request (a 2 MiB tokio worker), so the depth must be
/// bounded when the condition is loaded, not found out when it runs.
const MAX_DEPTH: usize = 32;

/// The stack of the thread that compiles conditions. `cel`'s parser
/// recurses once per operator of a chain like `1 + 1 + …` (its recursion
/// limit counts nesting only): on a 2 MiB stack that overflowed, aborting
/// the process, at about 1,600 operators in a release build and 100 in a
/// debug one. 64 MiB holds the longest expression accepted in either; it is
/// address space, touched only as deep as the parser goes.
const COMPILER_STACK_BYTES: usize = 64 << 20;

impl Condition {
    /// Compiles and checks a condition. Every problem found is returned.
    pub fn compile(spec: &ConditionSpec) -> Result<Condition, Vec<String>> {
        let len = spec.expression.len();
        if len > MAX_EXPRESSION_BYTES {
            return Err(vec![format!(
                "is {len} bytes long, over the limit of {MAX_EXPRESSION_BYTES}"
            )]);
        }
        std::thread::scope(|scope| {
            let compiler = std::thread::Builder::new()
                .name("idgate-cel-compile".into())
                .stack_size(COMPILER_STACK_BYTES)
                .spawn_scoped(scope, || Condition::compile_here(spec))
                .map_err(|e| vec![format!("cannot start a thread to compile it: {e}")])?;
            // A panic in the CEL library is a condition we cannot load, not
            // a reason to take the process (or a reload) down.
            compiler
                .join()
                .unwrap_or_else(|_| Err(vec!["the CEL library failed on it (panicked)".into()]))
        })
    }

    fn compile_here(spec: &ConditionSpec) -> Result<Condition, Vec<String>> {
        let env = env();
        let program = env
            .compile(&spec.expression)
            .map_err(|e| vec![format!("does not compile: {}", parse_errors(&e))])?;
        let depth = depth(program.expression());
        if depth > MAX_DEPTH {
            return Err(vec![format!(
                "nests {depth} levels deep, over the limit of {MAX_DEPTH}"
            )]);
        }
        let mut problems = Vec::new();
        let mut checker = Checker {
            bound: Vec::new(),
            problems: &mut problems,
            functions: HashSet::new(),
            reads_path: false,
            negated: 0,
            negates_path: false,
            negates_host: false,
        };
        checker.walk(program.expression());
        let functions = std::mem::take(&mut checker.functions);
        let reads_path = checker.reads_path;
        let path = checker.negates_path.then_some(
            "negates a test of request.path: an upstream that ignores letter case or a \
             trailing slash (Express, ASP.NET, older Spring) serves an excluded path under \
             spellings the test does not exclude (/ADMIN, /admin/); prefer a list of the \
             paths that may be called",
        );
        let host = checker.negates_host.then_some(
            "negates a test of request.host: it is the client's Host as written, so \
             ADMIN.example.com, admin.example.com. or admin.example.com:443 pass a test that \
             excludes admin.example.com, while servers route them to it; prefer a list of \
             the hosts that may be called",
        );
        let warning = match (path, host) {
            (None, None) => None,
            (Some(w), None) | (None, Some(w)) => Some(w.to_owned()),
            (Some(p), Some(h)) => Some(format!("{p}; it also {h}")),
        };
        let probe = Context::with_env(env.clone());
        for (name, member) in functions {
            if !function_exists(&probe, &name, member) {
                problems.push(format!("unknown function {name:?}"));
            }
        }
        check_literals(program.expression(), &probe, &mut problems);
        if problems.is_empty() {
            // A dry run on a plausible request: a condition that gives a
            // string or a number is a mistake IAM's type checker would
            // refuse. Errors are not judged here, as they may depend on the
            // request.
            let sample = RequestContext {
                time: SystemTime::now(),
                method: "GET",
                host: "localhost",
                path: "/",
            };
            if let Ok(v) = program.execute(&request_context(&sample))
                && !matches!(v, Value::Bool(_))
            {
                problems.push(format!("gives {}, not a bool", v.type_of()));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Condition {
            name: spec.name().into(),
            expression: spec.expression.clone(),
            program,
            reads_path,
            warning,
        })
    }

    /// Evaluates the condition in a context made by [`request_context`]
    /// for a request to `path`.
    pub fn evaluate(&self, context: &Context<'_, '_>, path: &str) -> Outcome {
        if self.reads_path
            && let Some(why) = ambiguous_path(path)
        {
            return Outcome::Failed(format!(
                "request.path {path:?} {why}, so an upstream may read it as another path"
            ));
        }
        match self.program.execute(context) {
            Ok(Value::Bool(true)) => Outcome::True,
            Ok(Value::Bool(false)) => Outcome::False,
            Ok(other) => Outcome::Failed(format!("gave {}, not a bool", other.type_of())),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// The CEL context of one request: `request` is a map with the four fields.
pub(super) fn request_context(ctx: &RequestContext<'_>) -> Context<'static, 'static> {
    let time = chrono::DateTime::<chrono::Utc>::from(ctx.time).fixed_offset();
    let request: HashMap<Key, Value> = HashMap::from([
        (Key::from("time"), Value::Timestamp(time)),
        (Key::from("path"), Value::from(ctx.path)),
        (Key::from("host"), Value::from(ctx.host)),
        (Key::from("method"), Value::from(ctx.method)),
    ]);
    let mut context = Context::with_env(env().clone());
    context.add_variable_from_value("request", request);
    context
}

/// Why `path` could name a different resource once an upstream decodes or
/// normalises it, if it could: a condition on `request.path` (and a public
/// path) must not hold for `/x/../admin`, `/admin;x`, `//admin` or
/// `/%61dmin` because the text does not start with `/admin`, when the
/// upstream serves `/admin` for each. Escapes of other bytes (`%20`,
/// UTF-8) stay allowed. Letter case and a trailing slash are not judged
/// here (a case-sensitive upstream tells `/Admin` from `/admin`): a
/// condition that negates a path test is warned about at load instead.
pub fn ambiguous_path(path: &str) -> Option<&'static str> {
    let bytes = path.as_bytes();
    if bytes.contains(&b'\\') {
        return Some("holds a backslash");
    }
    // Servlet containers drop a segment's `;parameters`: `/admin;x` is
    // `/admin` to them, and `..;` is `..`.
    if bytes.contains(&b';') {
        return Some("has a ;parameter");
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        match segment {
            "." | ".." => return Some("has a dot segment"),
            "" if segments.peek().is_some() => return Some("has an empty segment (//)"),
            _ => {}
        }
    }
    let mut i = 0;
    while let Some(at) = bytes[i..].iter().position(|&b| b == b'%') {
        let at = i + at;
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(bytes.get(at + 1)), hex(bytes.get(at + 2))) else {
            return Some("has a malformed percent-escape");
        };
        let decoded = (hi * 16 + lo) as u8;
        if decoded.is_ascii_alphanumeric() || b"-._~/\\%".contains(&decoded) {
            return Some("percent-encodes a character that decodes to another path");
        }
        i = at + 3;
    }
    None
}

/// Whether `name` is a function of the standard environment, called the
/// way the expression calls it (as a method or not). `cel` has no public
/// "is this declared" query, so we call it with no arguments: an
/// undeclared function says so, a declared one complains about its
/// arguments instead.
fn function_exists(probe: &Context<'_, '_>, name: &str, member: bool) -> bool {
    let source = if member {
        format!("null.{name}()")
    } else {
        format!("{name}()")
    };
    let Ok(program) = env().compile(&source) else {
        // Not an identifier we can call by name: an operator, which the
        // parser itself produced.
        return true;
    };
    !matches!(
        program.execute(probe),
        Err(ExecutionError::UndeclaredReference(ref n)) if n.as_str() == name
    )
}

/// Finds references to anything but `request.<field>` and the variables
/// that macros (`exists`, `all`, …) bind, and collects the functions called.
struct Checker<'a> {
    bound: Vec<&'a str>,
    problems: &'a mut Vec<String>,
    functions: HashSet<(String, bool)>,
    reads_path: bool,
    /// How many `!_` / `_!=_` the walk is inside.
    negated: usize,
    negates_path: bool,
    negates_host: bool,
}

impl<'a> Checker<'a> {
    fn walk(&mut self, e: &'a IdedExpr) {
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                if self.bound.contains(&name.as_str()) || TYPE_NAMES.contains(&name.as_str()) {
                    return;
                }
                let problem = if name == "request" {
                    format!(
                        "use request as request.{}, not on its own",
                        REQUEST_FIELDS.join(", request.")
                    )
                } else {
                    format!(
                        "unknown name {name:?} (a condition may use request.{})",
                        REQUEST_FIELDS.join(", request.")
                    )
                };
                self.problem(problem);
            }
            Expr::Select(sel) => {
                if let Expr::Ident(root) = &sel.operand.expr
                    && root == "request"
                    && !self.bound.contains(&"request")
                {
                    self.reads_path |= sel.field == "path";
                    self.negates_path |= sel.field == "path" && self.negated % 2 == 1;
                    self.negates_host |= sel.field == "host" && self.negated % 2 == 1;
                    if !REQUEST_FIELDS.contains(&sel.field.as_str()) {
                        self.problem(format!(
                            "unknown field request.{} (a condition may use request.{})",
                            sel.field,
                            REQUEST_FIELDS.join(", request.")
                        ));
                    }
                    return;
                }
                self.walk(&sel.operand);
            }
            Expr::Call(call) => {
                // Operators (`_==_`, `@in`, `!_`) are the parser's own.
                if call
                    .func_name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !call.func_name.starts_with('_')
                {
                    self.functions
                        .insert((call.func_name.clone(), call.target.is_some()));
                }
                let negation = usize::from(negates(call));
                // A ternary's else branch holds when its condition does not.
                let ternary = call.func_name == "_?_:_";
                self.negated += negation;
                if let Some(t) = &call.target {
                    self.walk(t);
                }
                for (i, a) in call.args.iter().enumerate() {
                    let flip = usize::from(ternary && i == 0);
                    self.negated += flip;
                    self.walk(a);
                    self.negated -= flip;
                }
                self.negated -= negation;
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range);
                self.walk(&c.accu_init);
                let depth = self.bound.len();
                self.bound.push(&c.iter_var);
                if let Some(v) = &c.iter_var2 {
                    self.bound.push(v);
                }
                self.bound.push(&c.accu_var);
                self.walk(&c.loop_cond);
                self.walk(&c.loop_step);
                self.walk(&c.result);
                self.bound.truncate(depth);
            }
            Expr::List(l) => {
                for item in &l.elements {
                    self.walk(item);
                }
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.walk(&me.key);
                        self.walk(&me.value);
                    }
                }
            }
            Expr::Struct(s) => {
                self.problem(format!(
                    "message construction ({}) is not available",
                    s.type_name
                ));
            }
        }
    }

    fn problem(&mut self, p: String) {
        if !self.problems.contains(&p) {
            self.problems.push(p);
        }
    }
}

/// Whether a call negates what its arguments say: `!x`, `x != y` (but not
/// `x != ""` nor `x != false`), `x == false`.
fn negates(call: &cel::common::ast::CallExpr) -> bool {
    let literal = |want: &Value| {
        call.args.iter().any(|a| {
            matches!(a.expr, Expr::Literal(_))
                && Context::with_env(env().clone()).resolve(a).ok().as_ref() == Some(want)
        })
    };
    match call.func_name.as_str() {
        "!_" => true,
        "_!=_" => !(literal(&Value::Bool(false)) || literal(&Value::from(""))),
        "_==_" => literal(&Value::Bool(false)),
        _ => false,
    }
}

/// `timestamp("…")` and `duration("…")` with a literal argument are
/// evaluated at load: a malformed date would otherwise make the condition
/// fail on every request, silently.
fn check_literals(e: &IdedExpr, probe: &Context<'_, '_>, problems: &mut Vec<String>) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match &e.expr {
            Expr::Call(call) => {
                if matches!(call.func_name.as_str(), "timestamp" | "duration")
                    && call.target.is_none()
                    && call.args.len() == 1
                    && matches!(call.args[0].expr, Expr::Literal(_))
                    && let Err(err) = probe.resolve(e)
                {
                    problems.push(format!("{}(…): {err}", call.func_name));
                }
                stack.extend(call.target.as_deref());
                stack.extend(&call.args);
            }
            Expr::Select(s) => stack.push(&s.operand),
            Expr::Comprehension(c) => {
                stack.extend([
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]);
            }
            Expr::List(l) => stack.extend(&l.elements),
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        stack.extend([&me.key, &me.value]);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The depth of an expression tree, found without recursing.
fn depth(e: &IdedExpr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(e, 1)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        let children: Vec<&IdedExpr> = match &e.expr {
            Expr::Unspecified | Expr::Literal(_) | Expr::Ident(_) => Vec::new(),
            Expr::Select(s) => vec![&s.operand],
            Expr::Call(call) => call
                .target
                .as_deref()
                .into_iter()
                .chain(&call.args)
                .collect(),
            Expr::Comprehension(c) => vec![
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ],
            Expr::List(l) => l.elements.iter().collect(),
            Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => entries
                .iter()
                .flat_map(|entry| match &entry.expr {
                    EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                    EntryExpr::StructField(f) => vec![&f.value],
                })
                .collect(),
        };
        stack.extend(children.into_iter().map(|c| (c, d + 1)));
    }
    deepest
}

/// CEL's parse errors, `LINE:COLUMN: message` each. Built from the fields:
/// the errors' `Display` panics on a column past 65,535 (a format width).
fn parse_errors(errors: &ParseErrors) -> String {
    let lines: Vec<String> = errors
        .errors
        .iter()
        .map(|e| format!("{}:{}: {}", e.pos.0, e.pos.1, e.msg))
        .collect();
    if lines.is_empty() {
        "unknown error".to_owned()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn compile(expr: &str) -> Result<Condition, Vec<String>> {
        Condition::compile(&ConditionSpec {
            title: Some("t".into()),
            expression: expr.into(),
        })
    }

    #[test]
    fn checks_at_load() {
        let good = [
            r#"request.time < timestamp("2030-01-01T00:00:00Z")"#,
            r#"request.path.startsWith("/admin")"#,
            r#"request.method == "GET" && request.host.endsWith(".example.com")"#,
            r#"["GET", "HEAD"].exists(m, m == request.method)"#,
            r#"has(request.path) && request.path.matches("^/v[0-9]+/")"#,
            r#"request.time.getHours("Europe/Paris") >= 9"#,
            r#"request.time - timestamp("2020-01-01T00:00:00Z") > duration("1h")"#,
            r#"type(request.path) == string"#,
        ];
        for g in good {
            if let Err(e) = compile(g) {
                panic!("{g}: {e:?}");
            }
        }
        let bad = [
            ("request.time <", "does not compile"),
            ("resource.name == 'x'", "unknown name \"resource\""),
            ("request.nope == 'x'", "unknown field request.nope"),
            ("request == 1", "use request as"),
            (
                "frobnicate(request.path)",
                "unknown function \"frobnicate\"",
            ),
            (
                "request.path.frobnicate()",
                "unknown function \"frobnicate\"",
            ),
            (r#"request.time < timestamp("yesterday")"#, "timestamp(…)"),
            (
                r#"request.time < request.time + duration("forever")"#,
                "duration(…)",
            ),
            ("request.path", "gives string, not a bool"),
        ];
        for (b, want) in bad {
            match compile(b) {
                Ok(_) => panic!("{b}: compiled"),
                Err(e) => assert!(e.iter().any(|p| p.starts_with(want)), "{b}: {e:?}"),
            }
        }
    }

    #[test]
    fn long_and_deep_expressions_are_refused_not_a_crash() {
        // Each of these aborted the process (a stack overflow in the CEL
        // parser, or a panic formatting its error) before the limits.
        let chain = |n: usize, op: &str| format!("1{} > 0", format!("{op}1").repeat(n));
        let deep = [
            chain(2040, "+"),
            chain(1000, " + "),
            format!("[1]{} == 1", "[0]".repeat(1350)),
            chain(40, "+"),
        ];
        for expr in &deep {
            assert!(expr.len() <= MAX_EXPRESSION_BYTES, "{}", expr.len());
            match compile(expr) {
                Ok(_) => panic!("{} bytes compiled", expr.len()),
                Err(e) => assert!(e[0].starts_with("nests "), "{e:?}"),
            }
        }
        let long = format!("{}true{}", "(".repeat(33_000), ")".repeat(33_000));
        match compile(&long) {
            Ok(_) => panic!("compiled"),
            Err(e) => assert_eq!(e, ["is 66004 bytes long, over the limit of 4096"]),
        }
        // Nesting past the CEL library's own limit is a compile error.
        let nested = format!("{}true{}", "(".repeat(200), ")".repeat(200));
        match compile(&nested) {
            Ok(_) => panic!("compiled"),
            Err(e) => assert!(e[0].starts_with("does not compile: 1:"), "{e:?}"),
        }
        // Long is fine when it is wide rather than deep.
        let paths: Vec<String> = (0..200).map(|i| format!("\"/p{i}\"")).collect();
        let wide = format!("request.path in [{}]", paths.join(", "));
        assert!(wide.len() > 1000);
        if let Err(e) = compile(&wide) {
            panic!("{e:?}");
        }
        assert!(compile(&chain(25, " + ")).is_ok());
    }

    #[test]
    fn evaluates_over_the_request() {
        let c = match compile(
            r#"request.time < timestamp("2030-01-01T00:00:00Z") && request.method == "GET""#,
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        };
        let eval = |secs: u64, method: &str| {
            c.evaluate(
                &request_context(&RequestContext {
                    time: UNIX_EPOCH + Duration::from_secs(secs),
                    method,
                    host: "h",
                    path: "/",
                }),
                "/",
            )
        };
        // 2030-01-01T00:00:00Z is 1893456000.
        assert_eq!(eval(1_893_455_999, "GET"), Outcome::True);
        assert_eq!(eval(1_893_456_000, "GET"), Outcome::False);
        assert_eq!(eval(1_893_455_999, "POST"), Outcome::False);
    }
    #[test]
    fn ambiguous_paths() {
        let ambiguous = [
            "/x/../admin",
            "/x/..",
            "/./admin",
            "/x/.",
            "/x/..;/admin",
            "/x/..;jsessionid=1/admin",
            "/admin;x",
            "/admin;/users",
            "/x;jsessionid=1/y",
            "//admin",
            "/a//b",
            "/%61dmin",
            "/x/%2e%2e/admin",
            "/x/%2E./admin",
            "/x%2Fy",
            "/x%5cy",
            "/x%2561dmin",
            "/x\\..\\admin",
            "/x%zz",
            "/x%4",
        ];
        for p in ambiguous {
            assert!(ambiguous_path(p).is_some(), "{p}");
        }
        let plain = [
            "/",
            "/admin",
            "/a/b/",
            "/a%20b",
            "/caf%C3%A9",
            "/...",
            "/.well-known/openid-configuration",
            "*",
        ];
        for p in plain {
            assert_eq!(ambiguous_path(p), None, "{p}");
        }
    }

    #[test]
    fn a_condition_on_the_path_does_not_hold_for_an_ambiguous_one() {
        let eval = |c: &Condition, path: &str| {
            c.evaluate(
                &request_context(&RequestContext {
                    time: UNIX_EPOCH,
                    method: "GET",
                    host: "h",
                    path,
                }),
                path,
            )
        };
        let outside_admin = compile(r#"!request.path.startsWith("/admin")"#).unwrap();
        assert_eq!(eval(&outside_admin, "/reports/1"), Outcome::True);
        assert_eq!(eval(&outside_admin, "/admin"), Outcome::False);
        for sneaky in ["/x/../admin", "//admin", "/%61dmin", "/x/..;/admin"] {
            match eval(&outside_admin, sneaky) {
                Outcome::Failed(why) => assert!(why.contains("request.path"), "{why}"),
                other => panic!("{sneaky}: {other:?}"),
            }
        }
        // A condition that does not read the path is not affected.
        let get_only = compile(r#"request.method == "GET""#).unwrap();
        assert_eq!(eval(&get_only, "/x/../admin"), Outcome::True);
    }

    #[test]
    fn negated_path_tests_are_warned_about() {
        let warned = |expr: &str| compile(expr).unwrap().warning.is_some();
        assert!(warned(r#"!request.path.startsWith("/admin")"#));
        assert!(warned(r#"request.path != "/admin""#));
        assert!(warned(
            r#"request.method == "GET" && !(request.path in ["/a", "/b"])"#
        ));
        assert!(!warned(r#"request.path.startsWith("/reports/")"#));
        assert!(!warned(
            r#"request.method != "POST" && request.path.startsWith("/r/")"#
        ));
        assert!(warned(r#"request.path.startsWith("/admin") == false"#));
        assert!(warned(r#"false == request.path.startsWith("/admin")"#));
        assert!(warned(
            r#"request.path.startsWith("/admin") ? false : true"#
        ));
        assert!(!warned(
            r#"request.path != "" && request.path.startsWith("/r/")"#
        ));
        assert!(!warned(r#"!(!request.path.startsWith("/reports/"))"#));
        assert!(!warned(r#"request.path.startsWith("/r/") != false"#));
    }

    #[test]
    fn negated_host_tests_are_warned_about() {
        let warning = |expr: &str| compile(expr).unwrap().warning;
        let w = warning(r#"request.host != "admin.example.com""#).unwrap();
        assert!(w.starts_with("negates a test of request.host"), "{w}");
        assert!(warning(r#"request.host == "api.example.com""#).is_none());
        let both =
            warning(r#"!request.host.endsWith(".internal") && !request.path.startsWith("/admin")"#)
                .unwrap();
        assert!(
            both.contains("request.path") && both.contains("request.host"),
            "{both}"
        );
    }
}
