//! The import of the webhooks the platform's Go webhooks service kept in its `webhooks` table
//! (`id, thing_id, group_id, name, url, headers, metadata`), through the plugin's `migration`
//! export: read in pages of ids, stored with the same ids, each at most once.
//!
//! `serve` imports once, on its first start against a database holding that table, and notes
//! it in `webhooks_host_imports`, so a webhook removed afterwards is not brought back by a
//! restart; an import cut short is not noted and runs again, storing only what is missing.
//! `webhooks-host import` runs it on demand. The Go service's table is only read.

use std::fmt;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::runtime::bindings::exports::mainflux::webhooks::migration::{ForeignWebhook, ImportOutcome};
use crate::runtime::{CallError, Runtime};
use crate::store::tls::TlsSettings;

/// Rows read and handed to the plugin at once.
const PAGE: i64 = 200;

/// The name the Go service's import is noted under in `webhooks_host_imports`.
const SOURCE: &str = "mainflux-webhooks";

const IMPORTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS webhooks_host_imports (
    source TEXT PRIMARY KEY,
    imported BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL DEFAULT now())";

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    /// Rows stored as webhooks.
    pub imported: u64,
    /// Rows whose id was already stored (imported before, or created here).
    pub present: u64,
    /// Rows this service refuses (each logged with its id and reason).
    pub refused: u64,
}

impl ImportReport {
    /// Rows not imported by this run, for whatever reason.
    pub fn skipped(&self) -> u64 {
        self.present + self.refused
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "imported {}, skipped {} ({} already present, {} refused)",
            self.imported,
            self.skipped(),
            self.present,
            self.refused
        )
    }
}

/// Why an import could not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The database could not be reached or read.
    #[error("{0}")]
    Database(String),
    /// The `webhooks` table lacks a column the import needs.
    #[error("the webhooks table has no {0} column: it is not the Go webhooks service's table")]
    Schema(&'static str),
    /// The plugin could not store a page.
    #[error("the plugin could not import: {0}")]
    Plugin(#[from] CallError),
}

fn database(context: &str, error: tokio_postgres::Error) -> ImportError {
    let detail = match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    };
    ImportError::Database(format!("{context}: {detail}"))
}

/// Whether there is anything to import, and whether it was imported before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// The database holds no `webhooks` table.
    NoTable,
    /// The table was imported before, by a run that finished.
    Imported,
    /// The table is there and has not been imported yet.
    Pending,
}

/// A connection to the database that holds the Go service's table.
pub struct GoTable {
    client: Client,
}

impl GoTable {
    /// Connects to the PostgreSQL database at `url`, over TLS as `tls` says.
    pub async fn connect(url: &str, tls: &TlsSettings) -> Result<Self, ImportError> {
        let (config, connector) =
            crate::store::postgres::connection_settings(url, tls).map_err(ImportError::Database)?;
        let (client, connection) = config
            .connect(connector)
            .await
            .map_err(|e| database("cannot connect", e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "the import's database connection ended");
            }
        });
        Ok(GoTable { client })
    }

    /// Whether the Go service's table is there and whether it was imported already.
    pub async fn standing(&self) -> Result<Standing, ImportError> {
        let row = self
            .client
            .query_one("SELECT to_regclass('webhooks') IS NOT NULL", &[])
            .await
            .map_err(|e| database("cannot look for the webhooks table", e))?;
        if !row.get::<_, bool>(0) {
            return Ok(Standing::NoTable);
        }
        self.client
            .batch_execute(IMPORTS_TABLE)
            .await
            .map_err(|e| database("cannot create webhooks_host_imports", e))?;
        let noted = self
            .client
            .query_opt("SELECT 1 FROM webhooks_host_imports WHERE source = $1", &[&SOURCE])
            .await
            .map_err(|e| database("cannot read webhooks_host_imports", e))?;
        Ok(if noted.is_some() {
            Standing::Imported
        } else {
            Standing::Pending
        })
    }

    /// Imports every row through the plugin, page by page in id order, and notes the import as
    /// done once the last page is stored.
    pub async fn import(&self, runtime: &Arc<Runtime>) -> Result<ImportReport, ImportError> {
        let columns = self.columns().await?;
        for required in ["id", "thing_id", "group_id", "name", "url"] {
            if !columns.iter().any(|c| c == required) {
                return Err(ImportError::Schema(required));
            }
        }
        // Early versions of the table have no metadata, and kept headers as the only JSON.
        let json_column = |name: &str| {
            if columns.iter().any(|c| c == name) {
                format!("COALESCE({name}::text, '')")
            } else {
                "''".to_owned()
            }
        };
        let query = format!(
            "SELECT id::text, thing_id::text, group_id::text, name, url, {}, {} FROM webhooks \
             WHERE id IS NOT NULL AND ($1::text IS NULL OR id > $1::text::uuid) ORDER BY id LIMIT $2",
            json_column("headers"),
            json_column("metadata"),
        );
        let statement = self
            .client
            .prepare(&query)
            .await
            .map_err(|e| database("cannot read the webhooks table", e))?;
        let mut report = ImportReport::default();
        let without_id: i64 = self
            .client
            .query_one("SELECT count(*) FROM webhooks WHERE id IS NULL", &[])
            .await
            .map_err(|e| database("cannot read the webhooks table", e))?
            .get(0);
        if without_id > 0 {
            tracing::warn!(
                rows = without_id,
                "rows of the webhooks table without an id are not imported"
            );
            report.refused += without_id as u64;
        }
        let mut after: Option<String> = None;
        loop {
            let rows = self
                .client
                .query(&statement, &[&after, &PAGE])
                .await
                .map_err(|e| database("cannot read the webhooks table", e))?;
            let Some(last) = rows.last() else { break };
            after = Some(last.get(0));
            let page: Vec<ForeignWebhook> = rows
                .iter()
                .map(|row| ForeignWebhook {
                    id: row.get(0),
                    thing_id: row.get(1),
                    group_id: row.get(2),
                    name: row.get(3),
                    url: row.get(4),
                    headers: row.get(5),
                    metadata: row.get(6),
                })
                .collect();
            let ids: Vec<String> = page.iter().map(|webhook| webhook.id.clone()).collect();
            let outcomes = runtime.migration().import_webhooks(page).await?;
            for (id, outcome) in ids.iter().zip(outcomes) {
                match outcome {
                    ImportOutcome::Imported => report.imported += 1,
                    ImportOutcome::Present => report.present += 1,
                    ImportOutcome::Refused(reason) => {
                        tracing::warn!(id, reason, "a webhook of the Go service's table is not imported");
                        report.refused += 1;
                    }
                }
            }
            if rows.len() < PAGE as usize {
                break;
            }
        }
        self.client
            .batch_execute(IMPORTS_TABLE)
            .await
            .map_err(|e| database("cannot create webhooks_host_imports", e))?;
        self.client
            .execute(
                "INSERT INTO webhooks_host_imports (source, imported, skipped) VALUES ($1, $2, $3) \
                 ON CONFLICT (source) DO UPDATE SET imported = EXCLUDED.imported, \
                 skipped = EXCLUDED.skipped, finished_at = now()",
                &[&SOURCE, &(report.imported as i64), &(report.skipped() as i64)],
            )
            .await
            .map_err(|e| database("cannot note the import in webhooks_host_imports", e))?;
        Ok(report)
    }

    async fn columns(&self) -> Result<Vec<String>, ImportError> {
        let rows = self
            .client
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_name = 'webhooks' AND table_schema = ANY (current_schemas(false))",
                &[],
            )
            .await
            .map_err(|e| database("cannot read the webhooks table's columns", e))?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// At start-up, before any message is taken in: imports the Go service's table if the
/// database holds one not imported yet. A failure to read it or to store it stops start-up,
/// since messages taken in meanwhile would miss the webhooks not imported; the next start
/// tries again. A `webhooks` table of another shape is not the Go service's: it is left alone.
pub async fn import_on_first_start(url: &str, tls: &TlsSettings, runtime: &Arc<Runtime>) -> Result<(), ImportError> {
    let table = GoTable::connect(url, tls).await?;
    if table.standing().await? != Standing::Pending {
        return Ok(());
    }
    if !runtime.migration().available() {
        tracing::warn!("the database holds the Go webhooks service's table, but this plugin version cannot import it");
        return Ok(());
    }
    tracing::info!("importing the Go webhooks service's webhooks table");
    let report = match table.import(runtime).await {
        Ok(report) => report,
        // Another application's table of that name: nothing of the Go service's to import.
        Err(error @ ImportError::Schema(_)) => {
            tracing::warn!(%error, "the database's webhooks table is not imported");
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    tracing::info!(
        imported = report.imported,
        skipped = report.skipped(),
        present = report.present,
        refused = report.refused,
        "imported the Go webhooks service's webhooks"
    );
    Ok(())
}
