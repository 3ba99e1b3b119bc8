//! What a volume is mounted with: the source from its handle (or, for an inline volume, its
//! attributes), the plugin's options (the administrator's) and an allow-list of attributes
//! and mount flags (the pod author's). Nothing a pod author writes becomes a path, an
//! endpoint, a port or a flag of the node: each allowed value is passed as one `--name=value`
//! argument and checked by the daemon's own parser.

use std::collections::HashMap;

use anyhow::{bail, Result};

/// Attributes (and mount flags) a pod author may set, as bucketfs's option names.
pub const ALLOWED: &[&str] = &[
    "uid",
    "gid",
    "file-mode",
    "dir-mode",
    "metadata-ttl",
    "negative-ttl",
    "content-type-default",
];

/// Allowed switches (an attribute `"true"`, or a bare mount flag).
pub const ALLOWED_SWITCHES: &[&str] = &["read-only", "no-xattr"];

/// Attribute keys kubelet adds (pod name, namespace, uid, service account, ephemeral).
const KUBELET_PREFIX: &str = "csi.storage.k8s.io/";

/// Options the plugin itself decides for every volume.
const PLUGIN_DECIDES: &[&str] = &["-f", "--foreground", "--allow-other", "-o"];

/// Checks the administrator's options once, at start: the daemon's parser must accept them.
pub fn check_plugin_options(options: &[String]) -> Result<()> {
    if let Some(bad) = options
        .iter()
        .find(|o| PLUGIN_DECIDES.contains(&o.split('=').next().unwrap_or_default()))
    {
        bail!("{bad}: the plugin sets this itself for every volume");
    }
    let mut argv = vec!["bucketfs".to_string()];
    argv.extend(options.iter().cloned());
    argv.extend(["plugin-check".to_string(), "/plugin-check".to_string()]);
    if let Err(e) = crate::cli::parse_args(argv) {
        bail!("mount options after --: {}", e.kind());
    }
    Ok(())
}

/// A volume as a daemon mounts it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Spec {
    /// `bucket` or `bucket:prefix`.
    pub source: String,
    /// Per-volume options (`--name=value`), the plugin's own not included.
    pub args: Vec<String>,
}

/// What a publish asks for, as the CSI request carries it.
#[derive(Debug)]
pub struct Request<'a> {
    /// The volume handle.
    pub volume_id: &'a str,
    /// The volume's attributes.
    pub context: &'a HashMap<String, String>,
    /// The capability's mount flags.
    pub mount_flags: &'a [String],
    /// The capability's mount group (the pod's fsGroup), if any.
    pub mount_group: &'a str,
}

/// The spec a publish asks for; an error names what is not allowed.
pub fn spec(req: &Request<'_>) -> Result<Spec> {
    let ephemeral = req
        .context
        .get("csi.storage.k8s.io/ephemeral")
        .is_some_and(|v| v == "true");
    let source = if ephemeral {
        let Some(bucket) = req.context.get("bucket") else {
            bail!("an inline volume names its bucket in the attribute \"bucket\"");
        };
        match req.context.get("prefix").filter(|p| !p.is_empty()) {
            Some(prefix) => format!("{bucket}:{prefix}"),
            None => bucket.clone(),
        }
    } else {
        req.volume_id.to_string()
    };
    check_source(&source)?;
    let mut named: Vec<(String, Option<String>)> = Vec::new();
    for (key, value) in req.context {
        if key.starts_with(KUBELET_PREFIX) || (ephemeral && (key == "bucket" || key == "prefix")) {
            continue;
        }
        named.push((key.clone(), Some(value.clone())));
    }
    for flag in req.mount_flags {
        match flag.split_once('=') {
            Some((key, value)) => named.push((key.to_string(), Some(value.to_string()))),
            None if flag == "ro" => named.push(("read-only".to_string(), None)),
            None => named.push((flag.clone(), None)),
        }
    }
    let mut args = Vec::new();
    let mut modes = false;
    for (key, value) in named {
        let key = key.replace('_', "-");
        if ALLOWED.contains(&key.as_str()) {
            let Some(value) = value else {
                bail!("\"{key}\" needs a value");
            };
            modes |= key.ends_with("-mode");
            args.push(format!("--{key}={value}"));
        } else if ALLOWED_SWITCHES.contains(&key.as_str()) {
            match value.as_deref() {
                None | Some("true") => args.push(format!("--{key}")),
                Some("false") => {}
                Some(other) => bail!("\"{key}\" is true or false, not {other:?}"),
            }
        } else {
            bail!(
                "\"{key}\" is not an option a volume may set (allowed: {}, {}; the \
                 plugin's administrator sets the rest)",
                ALLOWED.join(", "),
                ALLOWED_SWITCHES.join(", ")
            );
        }
    }
    if !req.mount_group.is_empty() {
        if req.mount_group.parse::<u32>().is_err() {
            bail!("volume_mount_group {:?} is not a group id", req.mount_group);
        }
        args.push(format!("--gid={}", req.mount_group));
        // The pod's processes are in the group, not the owner: let the group write.
        if !modes {
            args.extend(["--file-mode=664".to_string(), "--dir-mode=775".to_string()]);
        }
    }
    args.sort();
    args.dedup();
    Ok(Spec { source, args })
}

/// `bucket` or `bucket:prefix`, with an S3 bucket name (so it cannot read as a flag or a
/// path).
fn check_source(source: &str) -> Result<()> {
    let bucket = source.split_once(':').map_or(source, |(b, _)| b);
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !valid {
        bail!("{source:?} does not name a bucket (volume handle: bucket or bucket:prefix)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn attributes_are_an_allow_list() {
        let context = ctx(&[
            ("uid", "1000"),
            ("csi.storage.k8s.io/pod.name", "web-0"),
            ("no-xattr", "true"),
        ]);
        let flags = vec!["ro".to_string(), "file_mode=640".to_string()];
        let got = spec(&Request {
            volume_id: "data:logs/",
            context: &context,
            mount_flags: &flags,
            mount_group: "",
        })
        .unwrap();
        assert_eq!(got.source, "data:logs/");
        assert_eq!(
            got.args,
            ["--file-mode=640", "--no-xattr", "--read-only", "--uid=1000"]
        );
        for bad in [
            ("staging-dir", "/etc"),
            ("disk-cache", "/"),
            ("log-file", "/etc/passwd"),
            ("metrics-addr", "0.0.0.0:80"),
            ("endpoint-url", "http://evil"),
        ] {
            let context = ctx(&[bad]);
            let err = spec(&Request {
                volume_id: "data",
                context: &context,
                mount_flags: &[],
                mount_group: "",
            })
            .unwrap_err();
            assert!(err.to_string().contains(bad.0), "{err}");
        }
    }

    #[test]
    fn the_handle_names_a_bucket_and_inline_volumes_their_attributes() {
        let empty = HashMap::new();
        for bad in ["", "--log-file=/x", "a", "/etc", "Bad_Bucket"] {
            assert!(spec(&Request {
                volume_id: bad,
                context: &empty,
                mount_flags: &[],
                mount_group: "",
            })
            .is_err());
        }
        let inline = ctx(&[
            ("csi.storage.k8s.io/ephemeral", "true"),
            ("bucket", "data"),
            ("prefix", "team/"),
        ]);
        let got = spec(&Request {
            volume_id: "csi-0123",
            context: &inline,
            mount_flags: &[],
            mount_group: "2000",
        })
        .unwrap();
        assert_eq!(got.source, "data:team/");
        assert_eq!(
            got.args,
            ["--dir-mode=775", "--file-mode=664", "--gid=2000"]
        );
    }

    #[test]
    fn the_plugin_options_must_parse() {
        assert!(check_plugin_options(&["--region".into(), "eu-west-1".into()]).is_ok());
        assert!(check_plugin_options(&["--no-such-option".into()]).is_err());
        assert!(check_plugin_options(&["--foreground".into()]).is_err());
    }
}
