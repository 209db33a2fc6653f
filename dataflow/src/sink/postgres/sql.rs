//! The SQL text of the sink: SPEC §3 tables and views, the progress table, the per-session
//! staging tables and the set-based merge.
//!
//! Every statement is built once, at connect, from constant table descriptions and the
//! schema name quoted as an identifier ([`quote_ident`]). No data value is ever formatted
//! into SQL: values travel as statement parameters or inside binary COPY streams.

/// Heap fill factor (per cent) of the keyed tables. Almost every commit rewrites values of
/// existing rows (scores, counts) and never a key column, so with room left on each page
/// Postgres can store the new version beside the old one as a heap-only tuple: no new
/// primary-key entry, and later commits prune the dead versions in passing. See the
/// module docs of [`super`] for the measurement.
pub const FILLFACTOR: u32 = 70;

/// Columns of one keyed SPEC §3 table.
#[derive(Debug)]
pub(super) struct TableSpec {
    /// Table name (unquoted; all are lower-case SQL identifiers).
    pub(super) name: &'static str,
    /// Primary key columns, all `BIGINT`.
    pub(super) keys: &'static [&'static str],
    /// Value columns with their SQL types.
    pub(super) values: &'static [(&'static str, &'static str)],
    /// Whether the table has an `updated_at TIMESTAMPTZ` column, set to the transaction's
    /// time (`now()`) by every insert and update of a row (SPEC §3); not staged.
    pub(super) stamped: bool,
}

impl TableSpec {
    /// Fields of a staging row: `op`, the keys, the values.
    pub(super) fn staging_fields(&self) -> usize {
        1 + self.keys.len() + self.values.len()
    }

    fn staging_table(&self) -> String {
        format!("pg_temp.encore_stage_{}", self.name)
    }

    fn columns(&self) -> String {
        let mut columns: Vec<&str> = self.keys.to_vec();
        columns.extend(self.values.iter().map(|(name, _)| *name));
        columns.join(", ")
    }

    /// The stamp column, as it follows the value columns in an INSERT, and what it is set to.
    fn stamp(&self) -> (&'static str, &'static str) {
        if self.stamped {
            (", updated_at", ", now()")
        } else {
            ("", "")
        }
    }

    fn create_table(&self, schema: &str) -> String {
        let mut columns: Vec<String> = self.keys.iter().map(|k| format!("{k} BIGINT")).collect();
        columns.extend(self.values.iter().map(|(name, ty)| format!("{name} {ty}")));
        if self.stamped {
            columns.push("updated_at TIMESTAMPTZ".to_owned());
        }
        format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{} ({}, PRIMARY KEY ({})) WITH (fillfactor = {FILLFACTOR});\n",
            self.name,
            columns.join(", "),
            self.keys.join(", ")
        )
    }

    /// A temporary table per connection, emptied by every commit (`ON COMMIT DELETE ROWS`) and
    /// by every rollback: creating it once per session saves a catalog insert per commit.
    fn create_staging(&self) -> String {
        // op: 0 delete, 1 insert, 2 update (staging::OP_*).
        let mut columns = vec!["op SMALLINT NOT NULL".to_string()];
        columns.extend(self.keys.iter().map(|k| format!("{k} BIGINT NOT NULL")));
        columns.extend(self.values.iter().map(|(name, ty)| format!("{name} {ty}")));
        format!("CREATE TEMP TABLE IF NOT EXISTS encore_stage_{} ({}) ON COMMIT DELETE ROWS;\n", self.name, columns.join(", "))
    }

    fn copy_staging(&self) -> String {
        format!("COPY {} (op, {}) FROM STDIN (FORMAT binary)", self.staging_table(), self.columns())
    }

    /// Deletes the rows whose key was only retracted.
    fn merge_delete(&self, schema: &str) -> String {
        let join: Vec<String> = self.keys.iter().map(|k| format!("t.{k} = s.{k}")).collect();
        format!("DELETE FROM {schema}.{} AS t USING {} AS s WHERE s.op = 0 AND {};\n", self.name, self.staging_table(), join.join(" AND "))
    }

    /// Inserts the new keys (`op = 1`) with a plain INSERT: no per-row conflict
    /// check, about 40 % cheaper than an upsert. A key that exists after all (a commit
    /// replayed) fails the statement with a unique violation, and the commit is redone with
    /// [`merge_upsert`](Self::merge_upsert) for everything.
    fn merge_insert(&self, schema: &str) -> String {
        let (stamp, now) = self.stamp();
        format!(
            "INSERT INTO {schema}.{name} ({columns}{stamp}) SELECT {columns}{now} FROM {stage} WHERE op = 1;\n",
            name = self.name,
            columns = self.columns(),
            stage = self.staging_table(),
        )
    }

    /// Updates the existing keys (`op = 2`) with a plain UPDATE joined to the staging table.
    /// Its row count must equal the staged updates: fewer means rows the changes retract are
    /// missing (a replayed commit), and the commit is redone with upserts. No `IS DISTINCT
    /// FROM` filter here, so that the count is the rows found.
    fn merge_update(&self, schema: &str) -> String {
        let mut set: Vec<String> = self.values.iter().map(|(v, _)| format!("{v} = s.{v}")).collect();
        if self.stamped {
            // A row written as it already is (a replayed commit) keeps its time.
            let old: Vec<String> = self.values.iter().map(|(v, _)| format!("t.{v}")).collect();
            let new: Vec<String> = self.values.iter().map(|(v, _)| format!("s.{v}")).collect();
            set.push(format!(
                "updated_at = CASE WHEN ({}) IS DISTINCT FROM ({}) THEN now() ELSE t.updated_at END",
                old.join(", "),
                new.join(", ")
            ));
        }
        let join: Vec<String> = self.keys.iter().map(|k| format!("t.{k} = s.{k}")).collect();
        format!(
            "UPDATE {schema}.{} AS t SET {} FROM {} AS s WHERE s.op = 2 AND {};\n",
            self.name,
            set.join(", "),
            self.staging_table(),
            join.join(" AND ")
        )
    }

    /// Writes the rows whose `op` satisfies `filter`: inserted if new, updated if not. The
    /// `WHERE ... IS DISTINCT FROM` skips a row version (and its WAL) when the value is
    /// already there, as in a replayed commit.
    fn merge_upsert(&self, schema: &str, filter: &str) -> String {
        let mut set: Vec<String> = self.values.iter().map(|(v, _)| format!("{v} = EXCLUDED.{v}")).collect();
        if self.stamped {
            set.push("updated_at = EXCLUDED.updated_at".to_owned());
        }
        let old: Vec<String> = self.values.iter().map(|(v, _)| format!("t.{v}")).collect();
        let new: Vec<String> = self.values.iter().map(|(v, _)| format!("EXCLUDED.{v}")).collect();
        let (stamp, now) = self.stamp();
        format!(
            "INSERT INTO {schema}.{name} AS t ({columns}{stamp}) SELECT {columns}{now} FROM {stage} WHERE {filter} \
             ON CONFLICT ({keys}) DO UPDATE SET {set} WHERE ({old}) IS DISTINCT FROM ({new});\n",
            name = self.name,
            columns = self.columns(),
            stage = self.staging_table(),
            keys = self.keys.join(", "),
            set = set.join(", "),
            old = old.join(", "),
            new = new.join(", "),
        )
    }
}

/// `track_neighbors`: N(i), one row per track, members in rank order.
pub(super) const TRACK_NEIGHBORS: TableSpec = TableSpec {
    name: "track_neighbors",
    keys: &["track_id"],
    values: &[("neighbor_ids", "BIGINT[]"), ("scores", "DOUBLE PRECISION[]")],
    stamped: true,
};
/// `user_recommendations`: the stored R(u), one row per user, members in rank order.
pub(super) const USER_RECOMMENDATIONS: TableSpec = TableSpec {
    name: "user_recommendations",
    keys: &["user_id"],
    values: &[("track_ids", "BIGINT[]"), ("scores", "DOUBLE PRECISION[]")],
    stamped: true,
};
/// `track_stats`: plays, listeners and likes per track.
pub(super) const TRACK_STATS: TableSpec = TableSpec {
    name: "track_stats",
    keys: &["track_id"],
    values: &[("plays", "BIGINT"), ("listeners", "BIGINT"), ("likes", "BIGINT")],
    stamped: false,
};
/// `co_listens`: c(i,j) for i < j (only with `--emit-co-listens`).
pub(super) const CO_LISTENS: TableSpec =
    TableSpec { name: "co_listens", keys: &["track_a", "track_b"], values: &[("users", "BIGINT")], stamped: false };

/// `encore_last_listen`: `last(u,t)` for every `(user, track)` with a listen, the durable
/// state a restart rebuilds from (see [`crate::source::kafka`], "Durable state").
pub(super) const LAST_LISTENS: TableSpec =
    TableSpec { name: "encore_last_listen", keys: &["user_id", "track_id"], values: &[("last_ms", "BIGINT")], stamped: false };

/// The columns a schema of the older list layout has and today's does not: one row per list
/// member. Such tables are refused, not mixed ([`Statements::old_list_rows`]).
const MEMBER_ROW_COLUMNS: [(&str, &str); 2] = [("track_neighbors", "neighbor_id"), ("user_recommendations", "track_id")];

/// The keyed tables in the order a commit merges them.
const KEYED: [&TableSpec; 5] = [&TRACK_NEIGHBORS, &USER_RECOMMENDATIONS, &TRACK_STATS, &CO_LISTENS, &LAST_LISTENS];

/// Any fixed number works as long as every encore process uses the same one: it serialises
/// concurrent schema creation (two `CREATE TABLE IF NOT EXISTS` racing can both pass the
/// existence check and one then fails on a duplicate catalog row). ASCII "encore".
pub(super) const SCHEMA_LOCK_KEY: i64 = 0x656e_636f_7265;

pub use encore_pgconnect::quote_ident;

/// All SQL of one sink, for one schema.
#[derive(Clone, Debug)]
pub(super) struct Statements {
    pub(super) create_tables: String,
    pub(super) create_staging: String,
    pub(super) upsert_offsets: String,
    pub(super) select_offsets: String,
    pub(super) copy_dead_letters: String,
    pub(super) merge_dead_letters: String,
    pub(super) select_dead_letters: String,
    pub(super) select_parameters: String,
    pub(super) upsert_parameters: String,
    pub(super) mark_durable_state: String,
    /// Lists the old row-per-member tables of the schema (`$1`), if any.
    pub(super) old_list_rows: String,
    copy: Vec<(&'static str, String)>,
    merge_delete: Vec<(&'static str, String)>,
    merge_insert: Vec<(&'static str, String)>,
    merge_update: Vec<(&'static str, String)>,
    merge_upsert: Vec<(&'static str, String)>,
    pub(super) schema: String,
}

impl Statements {
    /// `schema` is the unquoted name (`--pg-schema`).
    pub(super) fn new(schema: &str, emit_co_listens: bool) -> Statements {
        let s = quote_ident(schema);
        let keyed: Vec<&TableSpec> = KEYED.into_iter().filter(|spec| emit_co_listens || spec.name != CO_LISTENS.name).collect();

        let (create_tables, create_staging) = (create_tables(&s, &keyed), create_staging(&keyed));
        Statements {
            create_tables,
            create_staging,
            // The WHERE refuses to move an offset backwards: the row is then not returned, and
            // the commit is aborted as fenced (another writer got further, or the topic was
            // recreated under the same name).
            upsert_offsets: format!(
                "INSERT INTO {s}.encore_progress AS p (topic, kafka_partition, next_offset) \
                 SELECT $1::text, u.kafka_partition, u.next_offset \
                 FROM unnest($2::int4[], $3::int8[]) AS u(kafka_partition, next_offset) \
                 ON CONFLICT (topic, kafka_partition) DO UPDATE \
                 SET next_offset = EXCLUDED.next_offset, committed_at = now() \
                 WHERE p.next_offset <= EXCLUDED.next_offset RETURNING kafka_partition"
            ),
            select_offsets: format!("SELECT kafka_partition, next_offset FROM {s}.encore_progress WHERE topic = $1::text"),
            copy_dead_letters: "COPY pg_temp.encore_stage_dead_letters (topic, kafka_partition, \
                                kafka_offset, payload, error) FROM STDIN (FORMAT binary)"
                .to_string(),
            // ORDER BY: ids follow the source order within a commit.
            merge_dead_letters: format!(
                "INSERT INTO {s}.dead_letters (topic, kafka_partition, kafka_offset, payload, error) \
                 SELECT topic, kafka_partition, kafka_offset, payload, error \
                 FROM pg_temp.encore_stage_dead_letters ORDER BY topic, kafka_partition, kafka_offset \
                 ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING;\n"
            ),
            select_dead_letters: format!("SELECT topic, kafka_partition, kafka_offset, payload, error FROM {s}.dead_letters ORDER BY id"),
            select_parameters: format!("SELECT parameters, durable_state FROM {s}.encore_parameters WHERE topic = $1::text"),
            upsert_parameters: format!(
                "INSERT INTO {s}.encore_parameters AS p (topic, parameters, durable_state) \
                 VALUES ($1::text, $2::text, $3::bool) ON CONFLICT (topic) DO UPDATE \
                 SET parameters = EXCLUDED.parameters, durable_state = EXCLUDED.durable_state, recorded_at = now()"
            ),
            mark_durable_state: format!("UPDATE {s}.encore_parameters SET durable_state = true WHERE topic = $1::text"),
            old_list_rows: {
                let tests: Vec<String> = MEMBER_ROW_COLUMNS
                    .iter()
                    .map(|(table, column)| format!("(table_name = '{table}' AND column_name = '{column}')"))
                    .collect();
                format!(
                    "SELECT table_name::text FROM information_schema.columns WHERE table_schema = $1::text AND ({}) ORDER BY 1",
                    tests.join(" OR ")
                )
            },
            copy: keyed.iter().map(|spec| (spec.name, spec.copy_staging())).collect(),
            merge_delete: keyed.iter().map(|spec| (spec.name, spec.merge_delete(&s))).collect(),
            merge_insert: keyed.iter().map(|spec| (spec.name, spec.merge_insert(&s))).collect(),
            merge_update: keyed.iter().map(|spec| (spec.name, spec.merge_update(&s))).collect(),
            merge_upsert: keyed.iter().map(|spec| (spec.name, spec.merge_upsert(&s, "op <> 0"))).collect(),
            schema: s,
        }
    }

    fn lookup<'a>(list: &'a [(&'static str, String)], table: &str) -> &'a str {
        list.iter().find(|(name, _)| *name == table).map_or("", |(_, sql)| sql.as_str())
    }

    /// `COPY` into the staging table of `table`.
    pub(super) fn copy(&self, table: &str) -> &str {
        Self::lookup(&self.copy, table)
    }

    /// The merge of `table`'s staged deletes.
    pub(super) fn merge_delete(&self, table: &str) -> &str {
        Self::lookup(&self.merge_delete, table)
    }

    /// The fast merge of `table`'s staged inserts (plain INSERT).
    pub(super) fn merge_insert(&self, table: &str) -> &str {
        Self::lookup(&self.merge_insert, table)
    }

    /// The fast merge of `table`'s staged updates (plain UPDATE; its row count is checked).
    pub(super) fn merge_update(&self, table: &str) -> &str {
        Self::lookup(&self.merge_update, table)
    }

    /// The safe merge of `table`'s staged inserts and updates, all as upserts.
    pub(super) fn merge_upsert(&self, table: &str) -> &str {
        Self::lookup(&self.merge_upsert, table)
    }

    /// `SELECT` of a whole keyed table, keys first, in key order.
    pub(super) fn select_table(&self, spec: &TableSpec) -> String {
        format!("SELECT {} FROM {}.{} ORDER BY {}", spec.columns(), self.schema, spec.name, spec.keys.join(", "))
    }

    /// `SELECT` of the key and value columns of the rows of `spec` whose `key_column` is
    /// `index` modulo `peers`: one loader's share.
    pub(super) fn select_share(&self, spec: &TableSpec, key_column: &str, peers: usize, index: usize) -> String {
        format!("SELECT {} FROM {}.{} WHERE {key_column} % {peers} = {index}", spec.columns(), self.schema, spec.name)
    }

    /// Binary `COPY` out of `columns` of the rows of `table` whose `key_column` is `index`
    /// modulo `peers`: one loader's share of a table. (COPY takes no parameters; both
    /// numbers are integers formatted here.)
    pub(super) fn copy_share(&self, table: &str, columns: &str, key_column: &str, peers: usize, index: usize) -> String {
        format!("COPY (SELECT {columns} FROM {}.{table} WHERE {key_column} % {peers} = {index}) TO STDOUT (FORMAT binary)", self.schema)
    }
}

/// The DDL of the schema `s` (quoted): the `keyed` tables, dead letters, progress,
/// parameters and the ranked views.
fn create_tables(s: &str, keyed: &[&TableSpec]) -> String {
    let mut create_tables = String::new();
    for spec in keyed {
        create_tables.push_str(&spec.create_table(s));
    }
    create_tables.push_str(&format!(
        "CREATE TABLE IF NOT EXISTS {s}.dead_letters (id BIGSERIAL PRIMARY KEY, topic TEXT, \
         kafka_partition INT, kafka_offset BIGINT, payload BYTEA, error TEXT, \
         received_at TIMESTAMPTZ DEFAULT now());\n\
         -- Not in SPEC §3's column list but no change to it: a message is dead-lettered at \
         most once even if a commit is replayed (ON CONFLICT DO NOTHING below).\n\
         CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_source ON {s}.dead_letters \
         (topic, kafka_partition, kafka_offset);\n\
         -- The next Kafka offset to consume per partition, committed with the deltas.\n\
         CREATE TABLE IF NOT EXISTS {s}.encore_progress (topic TEXT NOT NULL, \
         kafka_partition INT NOT NULL, next_offset BIGINT NOT NULL, \
         committed_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (topic, kafka_partition));\n\
         -- The SPEC §2 parameters the tables of a topic were computed with: a restart with \
         other ones would replay a different state under them (see PgSink::check_parameters).\n\
         CREATE TABLE IF NOT EXISTS {s}.encore_parameters (topic TEXT PRIMARY KEY, \
         parameters TEXT NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now());\n\
         -- Whether encore_last_listen holds the state of every committed offset of the \
         topic (tables from before the durable state have offsets but no state).\n\
         ALTER TABLE {s}.encore_parameters ADD COLUMN IF NOT EXISTS durable_state BOOLEAN \
         NOT NULL DEFAULT false;\n\
         -- One row per member (SPEC §3), rank 1-based in list order.\n\
         CREATE OR REPLACE VIEW {s}.track_neighbors_ranked AS SELECT n.track_id, m.rank, \
         m.neighbor_id, m.score FROM {s}.track_neighbors AS n, \
         unnest(n.neighbor_ids, n.scores) WITH ORDINALITY AS m(neighbor_id, score, rank);\n\
         CREATE OR REPLACE VIEW {s}.user_recommendations_ranked AS SELECT r.user_id, m.rank, \
         m.track_id, m.score, r.updated_at FROM {s}.user_recommendations AS r, \
         unnest(r.track_ids, r.scores) WITH ORDINALITY AS m(track_id, score, rank);\n"
    ));
    create_tables
}

/// The DDL of one connection's staging tables.
fn create_staging(keyed: &[&TableSpec]) -> String {
    let mut create_staging = String::new();
    for spec in keyed {
        create_staging.push_str(&spec.create_staging());
    }
    create_staging.push_str(
        "CREATE TEMP TABLE IF NOT EXISTS encore_stage_dead_letters (topic TEXT NOT NULL, \
         kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, payload BYTEA, \
         error TEXT) ON COMMIT DELETE ROWS;\n",
    );
    create_staging
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("public"), "\"public\"");
        assert_eq!(quote_ident("a\"b; DROP"), "\"a\"\"b; DROP\"");
    }

    #[test]
    fn co_listens_only_when_emitted() {
        assert!(!Statements::new("public", false).create_tables.contains("co_listens"));
        assert!(Statements::new("public", true).create_tables.contains("co_listens"));
    }
}
