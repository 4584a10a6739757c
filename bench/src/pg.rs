//! The PostgreSQL side of `--store postgres`: a database of its own per scenario run,
//! created on the server `--pg-url` names and dropped (`WITH (FORCE)`) when the run ends
//! (also when the bench is interrupted: dropping [`BenchDb`] drops it), and its size.
//!
//! Owns: the bench's databases. Must not: know Herald's schema (the daemon migrates its
//! database itself) or log the URL's password.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A database created for one scenario run; dropped with this value.
#[derive(Debug)]
pub struct BenchDb {
    server: tokio_postgres::Config,
    pub name: String,
    /// A key=value connection string naming the database (the daemons get it through
    /// `HERALD_PG_URL`).
    pub url: String,
}

impl BenchDb {
    /// Creates `herald_bench_<pid>_<n>` on the server `server_url` names (its database
    /// part is ignored: the admin statements run on `postgres`).
    pub fn create(server_url: &str) -> Result<BenchDb> {
        let server = tokio_postgres::Config::from_str(server_url)
            .map_err(|e| anyhow!("--pg-url / HERALD_BENCH_PG_URL is not a PostgreSQL URL: {e}"))?;
        let name = format!(
            "herald_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin(&server, format!("CREATE DATABASE {name}"))
            .with_context(|| format!("cannot create the database {name}"))?;
        Ok(BenchDb {
            url: url_for(&server, &name),
            server,
            name,
        })
    }

    /// `pg_database_size` of the database, bytes.
    pub fn size(&self) -> Result<u64> {
        let mut config = self.server.clone();
        config.dbname(&self.name);
        let bytes = on_thread(move || async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            let conn = tokio::spawn(conn);
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await?;
            drop(client);
            let _ = conn.await;
            Ok(row.get::<_, i64>(0))
        })?;
        Ok(u64::try_from(bytes).unwrap_or(0))
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        if let Err(e) = admin(
            &self.server,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            eprintln!(
                "herald-bench: cannot drop the database {}: {e:#}",
                self.name
            );
        }
    }
}

/// Runs `f`'s future on a runtime of its own on a thread of its own: usable from inside
/// the bench's runtime (and from `Drop`) without blocking one of its workers' tasks.
fn on_thread<T, F, Fut>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a runtime for a database statement")?;
        rt.block_on(f()).map_err(anyhow::Error::from)
    })
    .join()
    .map_err(|_| anyhow!("the database thread panicked"))?
}

/// One statement on the server's `postgres` database.
fn admin(server: &tokio_postgres::Config, sql: String) -> Result<()> {
    let mut config = server.clone();
    config.dbname("postgres");
    on_thread(move || async move {
        let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(conn);
        let r = client.batch_execute(&sql).await;
        drop(client);
        let _ = conn.await;
        r
    })
}

/// A key=value connection string for database `name` on `server`.
fn url_for(server: &tokio_postgres::Config, name: &str) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    if let Some(host) = server.get_hosts().first() {
        match host {
            tokio_postgres::config::Host::Tcp(h) => parts.push(format!("host={}", quote(h))),
            tokio_postgres::config::Host::Unix(p) => {
                parts.push(format!("host={}", quote(&p.to_string_lossy())))
            }
        }
    }
    if let Some(port) = server.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = server.get_user() {
        parts.push(format!("user={}", quote(user)));
    }
    if let Some(pw) = server.get_password() {
        parts.push(format!("password={}", quote(&String::from_utf8_lossy(pw))));
    }
    parts.push(format!("dbname={name}"));
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_names_the_database_and_keeps_the_server() {
        let server =
            tokio_postgres::Config::from_str("postgres://bob:s'cret@db.example:6543/").unwrap();
        assert_eq!(
            url_for(&server, "herald_bench_1_0"),
            r"host='db.example' port=6543 user='bob' password='s\'cret' dbname=herald_bench_1_0"
        );
        let parsed = tokio_postgres::Config::from_str(&url_for(&server, "x")).unwrap();
        assert_eq!(parsed.get_password(), Some(&b"s'cret"[..]));
        assert_eq!(parsed.get_dbname(), Some("x"));
    }

    #[test]
    fn a_bad_url_is_a_clear_error() {
        let e = BenchDb::create("postgres://[::1").unwrap_err();
        assert!(e.to_string().contains("not a PostgreSQL URL"), "{e}");
    }
}
