//! Access control (`--acl FILE`): which identity may read, write or
//! administer which keys. Identities are the names client certificates
//! carry ([`store_protocol::Identity::name`]); the habit is etcd's RBAC and
//! Redis's ACL. Without a file, every certificate of the CA is `admin`.
//!
//! ```toml
//! # Identity → role (read | readwrite | admin) and the key prefixes it
//! # may touch (omitted: every key). Identities not listed may do nothing
//! # but ask for `status`.
//! [identities.billing]
//! role = "readwrite"
//! prefixes = ["billing/", "shared/"]
//!
//! [identities.ops]
//! role = "admin"
//! ```
//!
//! [`Grant`] is the one place that answers "may this connection do that?".

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use serde::Deserialize;
use store_protocol::{client_id_space, space_of, ScanRequest, WireError};

use crate::error::ServerError;

/// What an identity may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclRole {
    /// `get`, `get_many`, `scan`.
    Read,
    /// Reads, commits and `resolve`.
    Readwrite,
    /// Everything, `promote` included.
    Admin,
}

/// One identity's entry in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    role: AclRole,
    prefixes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    identities: BTreeMap<String, Entry>,
}

/// The access rules, loaded once at start.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    /// `None`: no `--acl` file, every identity is `admin`.
    identities: Option<BTreeMap<String, Entry>>,
}

impl Acl {
    /// Everyone is `admin` (no `--acl` file).
    pub fn open() -> Acl {
        Acl::default()
    }

    /// Loads `path`; unknown keys and roles are errors that name them.
    pub fn load(path: &Path) -> Result<Acl, ServerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServerError::io(format!("reading --acl {}", path.display()), e))?;
        let file: File = toml::from_str(&text)
            .map_err(|e| ServerError::Config(format!("--acl {}: {e}", path.display())))?;
        Ok(Acl {
            identities: Some(file.identities),
        })
    }

    /// What `identity` may do.
    pub fn grant(&self, identity: &str) -> Grant {
        let (role, prefixes) = match &self.identities {
            None => (Some(AclRole::Admin), None),
            Some(identities) => match identities.get(identity) {
                Some(entry) => (
                    Some(entry.role),
                    entry
                        .prefixes
                        .as_ref()
                        .map(|p| p.iter().map(|s| Bytes::from(s.clone())).collect()),
                ),
                None => (None, Some(Vec::new())),
            },
        };
        Grant {
            identity: identity.to_string(),
            space: client_id_space(identity),
            role,
            prefixes,
        }
    }
}

/// What one connection's identity may do: every request is checked here.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The identity its certificate names.
    pub identity: String,
    /// The upper 64 bits of every `client_id` it may use.
    space: u64,
    /// `None`: nothing but `status`.
    role: Option<AclRole>,
    /// `None`: every key.
    prefixes: Option<Vec<Bytes>>,
}

impl Grant {
    fn deny(&self, what: String) -> WireError {
        WireError::PermissionDenied {
            identity: self.identity.clone(),
            what,
        }
    }

    fn need(&self, role: AclRole, what: impl FnOnce() -> String) -> Result<(), WireError> {
        if self.role.is_some_and(|has| has >= role) {
            Ok(())
        } else {
            Err(self.deny(what()))
        }
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.prefixes
            .as_ref()
            .is_none_or(|prefixes| prefixes.iter().any(|p| key.starts_with(p)))
    }

    /// May it touch `key` with `role`?
    fn key(&self, role: AclRole, verb: &str, key: &[u8]) -> Result<(), WireError> {
        let what = || format!("{verb} key {:?}", String::from_utf8_lossy(key));
        self.need(role, what)?;
        if self.covers(key) {
            Ok(())
        } else {
            Err(self.deny(what()))
        }
    }

    /// May it read `key`?
    pub fn read(&self, key: &[u8]) -> Result<(), WireError> {
        self.key(AclRole::Read, "read", key)
    }

    /// Of `keys`, those it may read (it hears of no change to another).
    pub fn readable(&self, keys: Vec<Bytes>) -> Vec<Bytes> {
        if self.role.is_some() && self.prefixes.is_none() {
            return keys;
        }
        keys.into_iter()
            .filter(|key| self.read(key).is_ok())
            .collect()
    }

    /// May it write `key`?
    pub fn write(&self, key: &[u8]) -> Result<(), WireError> {
        self.key(AclRole::Readwrite, "write", key)
    }

    /// May it scan this range? Only inside one of its prefixes.
    pub fn scan(&self, scan: &ScanRequest) -> Result<(), WireError> {
        let what = || format!("scan from key {:?}", String::from_utf8_lossy(&scan.start));
        self.need(AclRole::Read, what)?;
        let Some(prefixes) = &self.prefixes else {
            return Ok(());
        };
        let inside = prefixes.iter().any(|prefix| {
            let bound = ScanRequest::prefix(prefix.clone(), 0).end;
            scan.start.starts_with(prefix)
                && match (&scan.end, bound) {
                    (_, None) => true,
                    (Some(end), Some(bound)) => *end <= bound,
                    (None, Some(_)) => false,
                }
        });
        if inside {
            Ok(())
        } else {
            Err(self.deny(what()))
        }
    }

    /// May it commit or resolve transaction ids of `client_id`? Only in
    /// its own space, and only with `readwrite`.
    pub fn transaction(&self, client_id: u128) -> Result<(), WireError> {
        self.need(AclRole::Readwrite, || "commit or resolve".into())?;
        if space_of(client_id) == self.space {
            Ok(())
        } else {
            Err(self.deny(format!(
                "use client id {client_id:032x}, which belongs to another identity"
            )))
        }
    }

    /// May it administer the server: `what` is `promote` or `backup`.
    pub fn admin(&self, what: &str) -> Result<(), WireError> {
        self.need(AclRole::Admin, || format!("{what} (needs admin)"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn acl(text: &str) -> Acl {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.toml");
        std::fs::write(&path, text).unwrap();
        Acl::load(&path).unwrap()
    }

    fn id(identity: &str, low: u64) -> u128 {
        (u128::from(client_id_space(identity)) << 64) | u128::from(low)
    }

    #[test]
    fn roles_and_prefixes_decide_every_request() {
        let acl = acl(r#"
            [identities.billing]
            role = "readwrite"
            prefixes = ["billing/"]
            [identities.reports]
            role = "read"
            [identities.ops]
            role = "admin"
            "#);
        let billing = acl.grant("billing");
        assert!(billing.read(b"billing/1").is_ok());
        assert!(billing.write(b"billing/1").is_ok());
        assert!(billing.write(b"payroll/1").is_err());
        assert!(billing
            .scan(&ScanRequest::prefix(&b"billing/"[..], 10))
            .is_ok());
        assert!(billing
            .scan(&ScanRequest::prefix(&b"billing/x"[..], 10))
            .is_ok());
        assert!(billing.scan(&ScanRequest::prefix(&b""[..], 10)).is_err());
        assert!(billing.admin("promote").is_err());
        assert!(billing.transaction(id("billing", 1)).is_ok());
        assert!(billing.transaction(id("ops", 1)).is_err());

        let reports = acl.grant("reports");
        assert!(reports.read(b"anything").is_ok());
        assert!(reports.scan(&ScanRequest::prefix(&b""[..], 10)).is_ok());
        let denied = reports.write(b"k").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "permission denied: reports may not write key \"k\""
        );
        assert!(reports.transaction(id("reports", 1)).is_err());

        assert!(acl.grant("ops").admin("backup").is_ok());
        let stranger = acl.grant("stranger");
        assert!(stranger.read(b"k").is_err());

        // Without a file, everyone is admin of every key, in its own space.
        let open = Acl::open().grant("zeolite-client");
        assert!(open.admin("promote").is_ok() && open.write(b"k").is_ok());
        assert!(open.transaction(id("someone-else", 1)).is_err());
    }

    #[test]
    fn unknown_keys_and_roles_are_errors_that_name_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl.toml");
        for (text, named) in [
            (
                "[identities.a]\nrole = \"read\"\nprefix = [\"x\"]\n",
                "prefix",
            ),
            ("[identities.a]\nrole = \"root\"\n", "root"),
            ("[users.a]\nrole = \"read\"\n", "users"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = Acl::load(&path).unwrap_err().to_string();
            assert!(error.contains(named), "{error}");
        }
    }
}
