//! Configuration errors of the policy: every problem is collected, so one
//! run of `--check-config` shows them all.

use std::fmt;

/// The name [`PolicyError`]s and [`Grant`](super::Grant)s give to bindings
/// that came from `--member` flags rather than from a file.
pub const MEMBER_FLAG_SOURCE: &str = "--member";

/// Where a binding was written: which file, which position, which role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingAt {
    /// The file's path as given, or [`MEMBER_FLAG_SOURCE`].
    pub file: String,
    /// The binding's position in the file's `bindings` list (from 0), or
    /// the position of the `--member` flag.
    pub index: usize,
    /// The binding's role, or `<no role>` when it has none.
    pub role: String,
}

impl fmt::Display for BindingAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.file == MEMBER_FLAG_SOURCE {
            write!(f, "{}[{}]", self.file, self.index)
        } else {
            write!(f, "{}: bindings[{}] ({})", self.file, self.index, self.role)
        }
    }
}

/// One problem in the policy's sources.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file's path.
        file: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not JSON or YAML, or not shaped like an IAM policy (or a
    /// groups file) at the top level.
    #[error("{file}: {message}")]
    Document {
        /// The file's path.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// A binding is malformed: an unknown field, a wrong type, a missing
    /// role or member list.
    #[error("{at}: {field}: {message}")]
    Binding {
        /// The binding.
        at: BindingAt,
        /// The field at fault, as a path inside the binding
        /// (`members[2]`, `condition.expression`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A member that idgate does not understand, or that is malformed.
    #[error("{at}: member {member:?}: {message}")]
    Member {
        /// The binding.
        at: BindingAt,
        /// The member as written.
        member: String,
        /// What is wrong.
        message: String,
    },
    /// A condition that does not compile, or that uses something other
    /// than `request.time`, `request.path`, `request.host`, `request.method`.
    #[error("{at}: condition {title:?}: {message}")]
    Condition {
        /// The binding.
        at: BindingAt,
        /// The condition's title, or its expression when untitled.
        title: String,
        /// What is wrong.
        message: String,
    },
    /// A problem with one group of the groups file.
    #[error("{file}: group {group:?}: {message}")]
    Group {
        /// The groups file's path.
        file: String,
        /// The group as written.
        group: String,
        /// What is wrong.
        message: String,
    },
    /// Groups that contain themselves, directly or through others.
    #[error("{file}: group cycle: {}", .cycle.join(" -> "))]
    GroupCycle {
        /// The groups file's path.
        file: String,
        /// The groups around the cycle; the first is repeated at the end.
        cycle: Vec<String>,
    },
    /// A configured invoker role that cannot be a role name.
    #[error("invoker roles: {role:?}: {message}")]
    InvokerRole {
        /// The role as configured.
        role: String,
        /// What is wrong.
        message: String,
    },
    /// A configured workload identity pool that cannot be a pool path.
    #[error("pools: {pool:?}: {message}")]
    Pool {
        /// The pool as configured.
        pool: String,
        /// What is wrong.
        message: String,
    },
}

impl PolicyError {
    /// The file (or [`MEMBER_FLAG_SOURCE`]) the problem is in, when it is in
    /// one.
    pub fn file(&self) -> Option<&str> {
        match self {
            PolicyError::Read { file, .. }
            | PolicyError::Document { file, .. }
            | PolicyError::Group { file, .. }
            | PolicyError::GroupCycle { file, .. } => Some(file),
            PolicyError::Binding { at, .. }
            | PolicyError::Member { at, .. }
            | PolicyError::Condition { at, .. } => Some(&at.file),
            PolicyError::InvokerRole { .. } | PolicyError::Pool { .. } => None,
        }
    }

    /// The binding the problem is in, when it is in one.
    pub fn binding(&self) -> Option<&BindingAt> {
        match self {
            PolicyError::Binding { at, .. }
            | PolicyError::Member { at, .. }
            | PolicyError::Condition { at, .. } => Some(at),
            _ => None,
        }
    }
}

/// Every problem found in the policy's sources, each with its file, binding
/// and field. `Display` lists them all, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", DisplayAll(.0))]
pub struct PolicyErrors(pub Vec<PolicyError>);

struct DisplayAll<'a>(&'a [PolicyError]);

impl fmt::Display for DisplayAll<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl PolicyErrors {
    /// The problems, in the order they were found.
    pub fn iter(&self) -> std::slice::Iter<'_, PolicyError> {
        self.0.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never the case for an error that was
    /// returned).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a PolicyErrors {
    type Item = &'a PolicyError;
    type IntoIter = std::slice::Iter<'a, PolicyError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}
