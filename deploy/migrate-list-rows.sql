-- Converts the neighbour and recommendation tables of a schema written by an older
-- encore-flow, one row per list member, to one row per list (SPEC §3):
--
--   track_neighbors(track_id, neighbor_id, score)     → track_neighbors(track_id, neighbor_ids[], scores[], updated_at)
--   user_recommendations(user_id, track_id, score)    → user_recommendations(user_id, track_ids[], scores[], updated_at)
--
-- Every other table (offsets, parameters, the durable state, track_stats, dead letters, the
-- event log) is kept as it is, so encore-flow continues from the stored offsets afterwards.
-- Members keep their order (score descending, ties to the smaller id), updated_at is the time
-- of the conversion, and the ranked views are dropped: encore-flow creates the new ones when it
-- starts. Stop every encore-flow writing the schema first; the conversion is one transaction.
--
-- The schema is the first one on the search path:
--
--   PGOPTIONS='-c search_path=public' psql "postgres://USER@HOST:PORT/DB" -v ON_ERROR_STOP=1 -f deploy/migrate-list-rows.sql
BEGIN;

DROP VIEW IF EXISTS track_neighbors_ranked;
DROP VIEW IF EXISTS user_recommendations_ranked;

ALTER TABLE track_neighbors RENAME TO encore_migrating_track_neighbors;
CREATE TABLE track_neighbors (track_id BIGINT, neighbor_ids BIGINT[], scores DOUBLE PRECISION[], updated_at TIMESTAMPTZ,
                              PRIMARY KEY (track_id)) WITH (fillfactor = 70);
INSERT INTO track_neighbors (track_id, neighbor_ids, scores, updated_at)
SELECT track_id, array_agg(neighbor_id ORDER BY score DESC, neighbor_id), array_agg(score ORDER BY score DESC, neighbor_id), now()
FROM encore_migrating_track_neighbors GROUP BY track_id;
DROP TABLE encore_migrating_track_neighbors;

ALTER TABLE user_recommendations RENAME TO encore_migrating_user_recommendations;
CREATE TABLE user_recommendations (user_id BIGINT, track_ids BIGINT[], scores DOUBLE PRECISION[], updated_at TIMESTAMPTZ,
                                   PRIMARY KEY (user_id)) WITH (fillfactor = 70);
INSERT INTO user_recommendations (user_id, track_ids, scores, updated_at)
SELECT user_id, array_agg(track_id ORDER BY score DESC, track_id), array_agg(score ORDER BY score DESC, track_id), now()
FROM encore_migrating_user_recommendations GROUP BY user_id;
DROP TABLE encore_migrating_user_recommendations;

COMMIT;
