-- user_metrics becomes a table range-partitioned on "timestamp" (the event time, unix seconds) with a 64-bit id
-- (README: "Storage"). Existing rows are copied into the new table, partition by partition, in this migration's
-- transaction: the service is stopped meanwhile (db:migrate, or MIGRATE_ON_START before it listens).
--
-- PostgreSQL wants every unique key of a partitioned table to include the partition key: the identity is now
-- (record_key, "timestamp") and the primary key (id, "timestamp"). A retry carries its record's event time, so it
-- meets its stored row whichever partition holds it; the same eventId with another timestamp is another record.

ALTER TABLE "user_metrics" RENAME TO "user_metrics_unpartitioned";
ALTER TABLE "user_metrics_unpartitioned" DROP CONSTRAINT "user_metrics_pkey";
DROP INDEX "user_metrics_record_key_key";
DROP INDEX "user_metrics_user_id_timestamp_idx";
DROP INDEX "user_metrics_session_id_idx";
DROP INDEX "user_metrics_timestamp_idx";
DROP TRIGGER "metric_rollups_add" ON "user_metrics_unpartitioned";

-- The id sequence carries on (ids already given stay theirs), widened to 64 bits.
ALTER TABLE "user_metrics_unpartitioned" ALTER COLUMN "id" DROP DEFAULT;
ALTER SEQUENCE "user_metrics_id_seq" OWNED BY NONE;
ALTER SEQUENCE "user_metrics_id_seq" AS BIGINT;

-- CreateTable
CREATE TABLE "user_metrics" (
    "id" BIGINT NOT NULL DEFAULT nextval('user_metrics_id_seq'),
    "record_key" BYTEA NOT NULL,
    "event_id" VARCHAR(255),
    "user_id" VARCHAR(255) NOT NULL,
    "session_id" VARCHAR(255) NOT NULL,
    "timestamp" BIGINT NOT NULL,
    "talked_time" INTEGER NOT NULL,
    "microphone_used" BOOLEAN NOT NULL,
    "speaker_used" BOOLEAN NOT NULL,
    "voice_sentiment" VARCHAR(50),
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP
) PARTITION BY RANGE ("timestamp");

ALTER SEQUENCE "user_metrics_id_seq" OWNED BY "user_metrics"."id";

-- The partitions of user_metrics with their bounds [from_ts, to_ts), read from the catalog (the one place they are
-- kept), oldest first. `detaching` is true for a partition whose DETACH ... CONCURRENTLY was interrupted.
CREATE FUNCTION metric_partitions()
RETURNS TABLE (partition_name text, from_ts bigint, to_ts bigint, detaching boolean)
LANGUAGE sql STABLE
AS $$
  SELECT c.relname::text, bounds[1]::bigint, bounds[2]::bigint, i.inhdetachpending
  FROM pg_inherits AS i
  JOIN pg_class AS c ON c.oid = i.inhrelid
  CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''?(-?\d+)''?\) TO \(''?(-?\d+)''?\)')
    AS bounds
  WHERE i.inhparent = 'user_metrics'::regclass
  ORDER BY 2
$$;

-- Creates the partitions that the times `at` (unix seconds) need and do not have: [t - t % width, + width) each,
-- clipped to the partitions around it (so that a change of width never makes bounds overlap). Made as a plain table
-- and attached: ATTACH takes a SHARE UPDATE EXCLUSIVE lock on user_metrics, which concurrent inserts and reads do not
-- wait for (CREATE TABLE ... PARTITION OF would take ACCESS EXCLUSIVE). Instances creating at once take turns (a
-- transaction-scoped advisory lock) and find what the other made. Answers the names of the partitions created.
CREATE FUNCTION metric_partitions_ensure(at bigint[], width bigint)
RETURNS SETOF text
LANGUAGE plpgsql
AS $$
DECLARE
  t bigint;
  low bigint;
  high bigint;
  name text;
BEGIN
  IF width IS NULL OR width < 3600 OR width % 3600 <> 0 THEN
    RAISE EXCEPTION 'partition width must be a positive number of whole hours in seconds (got %)', width;
  END IF;
  PERFORM pg_advisory_xact_lock(7240315002);
  FOR t IN SELECT DISTINCT u FROM unnest(at) AS u WHERE u IS NOT NULL ORDER BY 1 LOOP
    IF EXISTS (SELECT FROM metric_partitions() AS p WHERE t >= p.from_ts AND t < p.to_ts) THEN
      CONTINUE;
    END IF;
    low := greatest(t - ((t % width) + width) % width,
                    (SELECT max(p.to_ts) FROM metric_partitions() AS p WHERE p.to_ts <= t));
    high := least(t - ((t % width) + width) % width + width,
                  (SELECT min(p.from_ts) FROM metric_partitions() AS p WHERE p.from_ts > t));
    name := 'user_metrics_p' || to_char(to_timestamp(low) AT TIME ZONE 'UTC',
      CASE WHEN low % 86400 = 0 THEN 'YYYYMMDD' ELSE 'YYYYMMDD"_"HH24MISS' END);
    EXECUTE format('CREATE TABLE %I (LIKE user_metrics INCLUDING DEFAULTS)', name);
    EXECUTE format('ALTER TABLE user_metrics ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)', name, low, high);
    RETURN NEXT name;
  END LOOP;
END
$$;

-- The partitions the rows kept need, then the rows, in the order of time (each partition filled in one go).
SELECT count(*) FROM metric_partitions_ensure(
  ARRAY(SELECT DISTINCT "timestamp" - "timestamp" % 86400 FROM "user_metrics_unpartitioned"), 86400);

INSERT INTO "user_metrics" ("id", "record_key", "event_id", "user_id", "session_id", "timestamp", "talked_time",
                            "microphone_used", "speaker_used", "voice_sentiment", "created_at")
SELECT "id", "record_key", "event_id", "user_id", "session_id", "timestamp", "talked_time", "microphone_used",
       "speaker_used", "voice_sentiment", "created_at"
FROM "user_metrics_unpartitioned"
ORDER BY "timestamp";

DROP TABLE "user_metrics_unpartitioned";

-- Keys and indexes built after the copy (one sort per partition instead of a row at a time). Each is made on every
-- partition, and on every partition attached later.
ALTER TABLE "user_metrics" ADD CONSTRAINT "user_metrics_pkey" PRIMARY KEY ("id", "timestamp");

-- CreateIndex
CREATE UNIQUE INDEX "user_metrics_record_key_timestamp_key" ON "user_metrics"("record_key", "timestamp");

-- CreateIndex
CREATE INDEX "user_metrics_user_id_timestamp_idx" ON "user_metrics"("user_id" varchar_pattern_ops, "timestamp");

-- CreateIndex
CREATE INDEX "user_metrics_session_id_idx" ON "user_metrics"("session_id" varchar_pattern_ops);

-- CreateIndex
CREATE INDEX "user_metrics_timestamp_idx" ON "user_metrics"("timestamp");

-- The rollups' trigger, on the new table (the copy above added nothing to the rollups: they hold those rows already).
-- A statement-level trigger with a transition table on the partitioned table sees the rows of every partition.
CREATE TRIGGER metric_rollups_add
AFTER INSERT ON user_metrics
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION metric_rollups_add();
