//! A child's environment, built from nothing: the host's own environment is
//! never inherited.
//!
//! In order, later entries winning:
//! 1. `NAME` grants passed through from the host's environment;
//! 2. the spawn's environment, when the call is declared and granted with
//!    `spawn_env`;
//! 3. variables the plugin set, each of which must be a `NAME` grant;
//! 4. `NAME=VALUE` grants, which nothing overrides.

use crate::config::{valid_env_name, EnvGrant};

pub struct EnvRequest<'a> {
    pub grants: &'a [EnvGrant],
    pub requested: &'a [(String, String)],
    pub spawn_env: Option<&'a [(String, String)]>,
    pub instance: &'a str,
}

pub fn child_env(req: &EnvRequest<'_>) -> Result<Vec<(String, String)>, String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let set = |env: &mut Vec<(String, String)>, k: &str, v: &str| {
        env.retain(|(n, _)| n != k);
        env.push((k.to_string(), v.to_string()));
    };
    for g in req.grants {
        if let EnvGrant::Pass(name) = g {
            if let Ok(v) = std::env::var(name) {
                set(&mut env, name, &v);
            }
        }
    }
    if let Some(spawn) = req.spawn_env {
        for (k, v) in spawn {
            set(&mut env, k, v);
        }
    }
    for (k, v) in req.requested {
        if !valid_env_name(k) || v.contains('\0') {
            return Err(format!(
                "environment variable {k:?} has an invalid name or a NUL byte"
            ));
        }
        match req.grants.iter().find(|g| g.name() == k) {
            Some(EnvGrant::Pass(_)) => set(&mut env, k, v),
            Some(EnvGrant::Fixed(..)) => {
                return Err(format!(
                    "environment variable {k} is fixed by the operator for instance `{}`; the plugin may not set it",
                    req.instance
                ))
            }
            None => {
                return Err(format!(
                    "environment variable {k} is not granted to instance `{}` (grants.env)",
                    req.instance
                ))
            }
        }
    }
    for g in req.grants {
        if let EnvGrant::Fixed(k, v) = g {
            set(&mut env, k, v);
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_from_grants_spawn_and_plugin_in_order() {
        std::env::set_var("WASMSPAWNER_TEST_PASS", "from-host");
        std::env::set_var("WASMSPAWNER_TEST_SECRET_NOT_GRANTED", "x");
        let grants = vec![
            EnvGrant::Pass("WASMSPAWNER_TEST_PASS".into()),
            EnvGrant::Pass("EXTRA".into()),
            EnvGrant::Fixed("SLURM_CONF".into(), "/etc/slurm.conf".into()),
        ];
        let spawn = vec![("JUPYTERHUB_API_TOKEN".to_string(), "tok".to_string())];
        let env = child_env(&EnvRequest {
            grants: &grants,
            requested: &[("EXTRA".into(), "1".into())],
            spawn_env: Some(&spawn),
            instance: "t",
        })
        .unwrap();
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("WASMSPAWNER_TEST_PASS"), Some("from-host"));
        assert_eq!(get("JUPYTERHUB_API_TOKEN"), Some("tok"));
        assert_eq!(get("EXTRA"), Some("1"));
        assert_eq!(get("SLURM_CONF"), Some("/etc/slurm.conf"));
        assert_eq!(get("WASMSPAWNER_TEST_SECRET_NOT_GRANTED"), None);
        assert_eq!(get("PATH"), None);
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn plugin_may_not_set_ungranted_or_fixed() {
        let grants = vec![EnvGrant::Fixed("SLURM_CONF".into(), "/a".into())];
        let req = |k: &str| {
            child_env(&EnvRequest {
                grants: &grants,
                requested: &[(k.into(), "v".into())],
                spawn_env: None,
                instance: "t",
            })
        };
        assert!(req("LD_PRELOAD").unwrap_err().contains("not granted"));
        assert!(req("SLURM_CONF").unwrap_err().contains("fixed"));
    }
}
