//! The secret variables of the environment: which they are, and wiping them from the
//! process once read (invariant 13).

use zeroize::Zeroize;

/// Whether a variable holds a secret that must not stay in the process environment once
/// read: the master keys, the admin token, OAuth client secrets (and any other
/// `LATCHKEY_*` key, token or secret), and the database URL, which may carry a password.
pub fn is_secret_var(name: &str) -> bool {
    name.starts_with("LATCHKEY_")
        && (name == "LATCHKEY_DATABASE_URL"
            || ["_KEY", "_KEYS", "_TOKEN", "_SECRET"]
                .iter()
                .any(|suffix| name.ends_with(suffix)))
}

/// Overwrites, with zero bytes, the `NAME=value` strings of `names` in the block where
/// the kernel placed the process's initial environment (`/proc/self/stat` fields
/// `env_start` and `env_end`), through `/proc/self/mem`. Removing a variable only drops
/// the C library's pointer to that string; the bytes stay, and `/proc/<pid>/environ`
/// shows them to every process of the same user. Best effort: where this is not
/// possible (not Linux, no /proc), the removal from the environment is what remains.
///
/// Sound only for strings nothing points to any more: call it after removing the
/// variables, with no other thread running.
#[cfg(target_os = "linux")]
pub(super) fn wipe_initial_environment(names: &[String]) {
    use std::io::{Read, Seek, SeekFrom, Write};
    if names.is_empty() {
        return;
    }
    let Some((start, end)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| env_block(&stat))
    else {
        return;
    };
    let Ok(mut mem) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
    else {
        return;
    };
    let Ok(len) = usize::try_from(end.saturating_sub(start)) else {
        return;
    };
    let mut block = vec![0u8; len];
    if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut block).is_err() {
        return;
    }
    let mut offset = 0;
    for entry in block.split(|b| *b == 0) {
        let name = entry.split(|b| *b == b'=').next().unwrap_or_default();
        if !entry.is_empty() && names.iter().any(|n| n.as_bytes() == name) {
            let zeros = vec![0u8; entry.len()];
            let _ = mem
                .seek(SeekFrom::Start(start + offset as u64))
                .and_then(|_| mem.write_all(&zeros));
        }
        offset += entry.len() + 1;
    }
    block.zeroize();
}

#[cfg(not(target_os = "linux"))]
pub(super) fn wipe_initial_environment(_names: &[String]) {}

/// `env_start` and `env_end` (fields 50 and 51) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces: fields are counted
/// after its closing parenthesis.
fn env_block(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    let start = fields.get(50 - 3)?.parse().ok()?;
    let end = fields.get(51 - 3)?.parse().ok()?;
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_variables() {
        for name in [
            "LATCHKEY_MASTER_KEYS",
            "LATCHKEY_ADMIN_TOKEN",
            "LATCHKEY_OAUTH_GOOGLE_CLIENT_SECRET",
            "LATCHKEY_DATABASE_URL",
        ] {
            assert!(is_secret_var(name), "{name}");
        }
        for name in [
            "LATCHKEY_LISTEN",
            "LATCHKEY_OAUTH_GOOGLE_CLIENT_ID",
            "LATCHKEY_ALLOW_INSECURE_KEY_FILE",
            "LATCHKEY_LOG",
            "PATH",
            "AWS_SECRET",
        ] {
            assert!(!is_secret_var(name), "{name}");
        }
    }

    #[test]
    fn the_environment_block_is_found_in_proc_stat() {
        // A command name with spaces and parentheses, as the kernel prints it.
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[50 - 3] = "140737488347000".into();
        fields[51 - 3] = "140737488349000".into();
        let stat = format!("1234 (a (b) c) {}", fields.join(" "));
        assert_eq!(env_block(&stat), Some((140737488347000, 140737488349000)));
        assert_eq!(env_block("1 (x) S 2 3"), None);
        #[cfg(target_os = "linux")]
        {
            let own = std::fs::read_to_string("/proc/self/stat").unwrap();
            assert!(env_block(&own).is_some(), "{own}");
        }
    }
}
