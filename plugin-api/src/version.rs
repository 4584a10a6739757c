//! The compatibility rule between the host's `herald-plugin-api` and the version a plugin
//! was built against: a caret rule, as Cargo applies to `^plugin_version`.

/// Accepts `plugin` if `^plugin` matches `host`: the same major version (and, for 0.x, the
/// same minor), and a host at least as new as the plugin. A plugin built against an older
/// minor version keeps working; one built against a newer one may rely on fields this host
/// does not send, so it is refused.
pub fn check_api_compat(host: &str, plugin: &str) -> Result<(), String> {
    let parse = |v: &str| -> Option<(u64, u64, u64)> {
        let core = v.split(['-', '+']).next()?;
        let mut it = core.split('.').map(|p| p.parse::<u64>().ok());
        let t = (it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(t)
    };
    let h = parse(host).ok_or_else(|| format!("host plugin-api version {host:?} is not semver"))?;
    let Some(p) = parse(plugin) else {
        return Err(format!(
            "the plugin states plugin-api version {plugin:?}, which is not a semver version; \
             rebuild it against herald-plugin-api {host}"
        ));
    };
    let same_line = if p.0 == 0 {
        h.0 == 0 && h.1 == p.1
    } else {
        h.0 == p.0
    };
    if same_line && h >= p {
        Ok(())
    } else {
        Err(format!(
            "the plugin was built against herald-plugin-api {plugin}, but this heraldd provides \
             {host} (a plugin needs the same major version and a version no newer than the \
             host's); rebuild the plugin against herald-plugin-api {host}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::check_api_compat;

    #[test]
    fn caret_rule() {
        assert!(check_api_compat("1.3.0", "1.0.0").is_ok());
        assert!(check_api_compat("1.3.0", "1.3.0").is_ok());
        assert!(check_api_compat("1.3.2", "1.3.1").is_ok());
        let newer = check_api_compat("1.3.0", "1.4.0").unwrap_err();
        assert!(
            newer.contains("1.4.0") && newer.contains("1.3.0"),
            "{newer}"
        );
        assert!(check_api_compat("1.3.0", "2.0.0").is_err());
        assert!(check_api_compat("2.0.0", "1.9.0").is_err());
        assert!(check_api_compat("0.2.1", "0.2.0").is_ok());
        assert!(check_api_compat("0.3.0", "0.2.0").is_err());
        assert!(check_api_compat("1.0.0", "one").is_err());
    }
}
