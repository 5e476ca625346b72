-- Two changes to the rollups (README: "Rollups").
--
-- Rollup deltas: the trigger appends what each statement stored to metric_rollup_deltas, a table
-- without an index, instead of upserting metric_rollups. A batch spread over a month then writes ~1,000 plain rows
-- instead of ~1,000 index probes and updates, and concurrent batches no longer wait on each other's rollup rows.
-- metric_rollups_fold moves the deltas into metric_rollups in one statement (the service runs it every second);
-- readers add metric_rollups and the deltas not folded yet, so an answer is the same before and after a fold.

-- CreateTable
CREATE TABLE "metric_rollup_deltas" (
    "slot_start" BIGINT NOT NULL,
    "has_sentiment" BOOLEAN NOT NULL,
    "voice_sentiment" VARCHAR(50) NOT NULL,
    "microphone_used" BOOLEAN NOT NULL,
    "speaker_used" BOOLEAN NOT NULL,
    "count" BIGINT NOT NULL,
    "talked_sum" BIGINT NOT NULL,
    "talked_min" INTEGER NOT NULL,
    "talked_max" INTEGER NOT NULL,
    "first_timestamp" BIGINT NOT NULL,
    "last_timestamp" BIGINT NOT NULL
);

-- Every row is deleted within a second or so of its insert: vacuumed by row count, not by a share of a table that is
-- nearly always empty.
ALTER TABLE "metric_rollup_deltas" SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
  autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 10000, autovacuum_analyze_scale_factor = 0,
  autovacuum_analyze_threshold = 10000);

-- What the trigger did to metric_rollups before this migration, done by the fold. Rows go in in key order, so that
-- concurrent folds (and rebuilds) lock the rollup rows they share in the same order; ON CONFLICT DO UPDATE adds under
-- the row's lock, so no increment is lost.
CREATE OR REPLACE FUNCTION metric_rollups_add() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  INSERT INTO metric_rollup_deltas (slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used, count,
                                    talked_sum, talked_min, talked_max, first_timestamp, last_timestamp)
  SELECT "timestamp" - "timestamp" % 900, voice_sentiment IS NOT NULL, coalesce(voice_sentiment, ''), microphone_used,
         speaker_used, count(*), sum(talked_time), min(talked_time), max(talked_time), min("timestamp"), max("timestamp")
  FROM new_rows
  GROUP BY 1, 2, 3, 4, 5;
  RETURN NULL;
END
$$;

-- Moves every delta committed so far into metric_rollups, atomically (a reader sees a delta or its sum, never both nor
-- neither). One fold at a time (a transaction-scoped advisory lock, also taken by the rebuild); with `wait` false a
-- fold another session is running answers -1 at once. Answers how many delta rows it folded.
CREATE FUNCTION metric_rollups_fold(wait boolean) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
  folded bigint;
BEGIN
  IF wait THEN
    PERFORM pg_advisory_xact_lock(7240315001);
  ELSIF NOT pg_try_advisory_xact_lock(7240315001) THEN
    RETURN -1;
  END IF;
  WITH taken AS (
    DELETE FROM metric_rollup_deltas RETURNING *
  ), summed AS (
    INSERT INTO metric_rollups AS r (slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used, count,
                                     talked_sum, talked_min, talked_max, first_timestamp, last_timestamp)
    SELECT slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used, sum(count), sum(talked_sum),
           min(talked_min), max(talked_max), min(first_timestamp), max(last_timestamp)
    FROM taken
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT (slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used) DO UPDATE SET
      count = r.count + excluded.count,
      talked_sum = r.talked_sum + excluded.talked_sum,
      talked_min = least(r.talked_min, excluded.talked_min),
      talked_max = greatest(r.talked_max, excluded.talked_max),
      first_timestamp = least(r.first_timestamp, excluded.first_timestamp),
      last_timestamp = greatest(r.last_timestamp, excluded.last_timestamp)
  )
  -- A data-modifying WITH runs to completion whether or not the query reads it.
  SELECT count(*) INTO folded FROM taken;
  RETURN folded;
END
$$;

-- Hourly sketches: the 15-minute sketches of an hour merged (bit_or of the bitmaps, element-wise sum of the
-- histograms), so that a question over a month in a zone whose offsets are whole hours merges 720 sketches instead of
-- 2,880. An hourly sketch answers while its count is the hour's rollup count; the 15-minute ones answer otherwise.

-- CreateTable
CREATE TABLE "metric_rollup_sketches_hourly" (
    "hour_start" BIGINT NOT NULL,
    "count" BIGINT NOT NULL,
    "user_bits" VARBIT NOT NULL,
    "talked_histogram" INTEGER[],
    "talked_coarse" INTEGER[],

    CONSTRAINT "metric_rollup_sketches_hourly_pkey" PRIMARY KEY ("hour_start")
);

-- The records of each slot in [from_slot, to_slot) (null: unbounded): metric_rollups and the deltas not folded yet.
CREATE FUNCTION metric_rollup_slot_counts(from_slot bigint, to_slot bigint)
RETURNS TABLE (slot_start bigint, n bigint)
LANGUAGE sql STABLE
AS $$
  SELECT r.slot_start, sum(r.count)::bigint
  FROM (SELECT slot_start, count FROM metric_rollups UNION ALL SELECT slot_start, count FROM metric_rollup_deltas) AS r
  WHERE (from_slot IS NULL OR r.slot_start >= from_slot) AND (to_slot IS NULL OR r.slot_start < to_slot)
  GROUP BY r.slot_start
$$;

-- The refresh builds the missing or stale 15-minute sketches as before (a slot's count now includes its unfolded
-- deltas), then the missing or stale hourly sketches of the hours (whole, whatever the range cuts) whose every slot now
-- has a sketch covering it. Two statements: the second sees what the first stored. Answers the 15-minute sketches built.
CREATE OR REPLACE FUNCTION metric_rollup_sketches_refresh(from_slot bigint, to_slot bigint) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
  built_slots bigint;
  from_hour bigint := from_slot - from_slot % 3600;
  to_hour bigint := CASE WHEN to_slot % 3600 = 0 THEN to_slot ELSE to_slot - to_slot % 3600 + 3600 END;
BEGIN
  WITH stale AS (
    SELECT r.slot_start, r.n FROM metric_rollup_slot_counts(from_slot, to_slot) AS r
    LEFT JOIN metric_rollup_sketches AS s USING (slot_start)
    WHERE s.count IS DISTINCT FROM r.n
  ), built AS (
    SELECT stale.slot_start, count(*) AS n, metric_user_bits(array_agg(metric_user_position(m.user_id))) AS user_bits,
           metric_talked_histogram(array_agg(metric_talked_bucket(m.talked_time))) AS talked_histogram
    FROM stale JOIN user_metrics AS m ON m."timestamp" >= stale.slot_start AND m."timestamp" < stale.slot_start + 900
    GROUP BY stale.slot_start, stale.n
    HAVING count(*) = stale.n
  ), stored AS (
    INSERT INTO metric_rollup_sketches AS s (slot_start, count, user_bits, talked_histogram, talked_coarse)
    SELECT slot_start, n, user_bits, talked_histogram, metric_histogram_coarse(talked_histogram) FROM built ORDER BY slot_start
    ON CONFLICT (slot_start) DO UPDATE SET count = excluded.count, user_bits = excluded.user_bits,
      talked_histogram = excluded.talked_histogram, talked_coarse = excluded.talked_coarse
    RETURNING 1
  )
  SELECT count(*) INTO built_slots FROM stored;

  WITH hours AS (
    SELECT r.slot_start - r.slot_start % 3600 AS hour_start, sum(r.n)::bigint AS n,
           bool_and(s.count IS NOT DISTINCT FROM r.n) AS covered
    FROM metric_rollup_slot_counts(from_hour, to_hour) AS r LEFT JOIN metric_rollup_sketches AS s USING (slot_start)
    GROUP BY 1
  ), stale AS (
    SELECT h.hour_start, h.n FROM hours AS h LEFT JOIN metric_rollup_sketches_hourly AS x USING (hour_start)
    WHERE h.covered AND x.count IS DISTINCT FROM h.n
  ), merged AS (
    SELECT stale.hour_start, stale.n, bit_or(s.user_bits) AS user_bits,
           (SELECT array_agg(t ORDER BY i) FROM (
              SELECT u.i, sum(u.x)::integer AS t
              FROM metric_rollup_sketches AS q CROSS JOIN LATERAL unnest(q.talked_histogram) WITH ORDINALITY AS u(x, i)
              WHERE q.slot_start >= stale.hour_start AND q.slot_start < stale.hour_start + 3600
              GROUP BY u.i) AS sums) AS talked_histogram
    FROM stale JOIN metric_rollup_sketches AS s
      ON s.slot_start >= stale.hour_start AND s.slot_start < stale.hour_start + 3600
    GROUP BY stale.hour_start, stale.n
    HAVING sum(s.count) = stale.n
  )
  INSERT INTO metric_rollup_sketches_hourly AS x (hour_start, count, user_bits, talked_histogram, talked_coarse)
  SELECT hour_start, n, user_bits, talked_histogram, metric_histogram_coarse(talked_histogram) FROM merged
  ORDER BY hour_start
  ON CONFLICT (hour_start) DO UPDATE SET count = excluded.count, user_bits = excluded.user_bits,
    talked_histogram = excluded.talked_histogram, talked_coarse = excluded.talked_coarse;
  RETURN built_slots;
END
$$;

-- The rebuild: the earlier function (kept, renamed) after a fold under the fold's lock (held to the transaction's end,
-- so no fold runs meanwhile), with the hourly sketches of the range's hours dropped (the next refresh merges them
-- again from the rebuilt slots' sketches).
ALTER FUNCTION metric_rollups_rebuild(bigint, bigint) RENAME TO metric_rollups_rebuild_slots;

CREATE FUNCTION metric_rollups_rebuild(from_slot bigint, to_slot bigint) RETURNS bigint
LANGUAGE plpgsql
AS $$
BEGIN
  LOCK TABLE user_metrics IN SHARE MODE;
  PERFORM metric_rollups_fold(true);
  DELETE FROM metric_rollup_sketches_hourly
  WHERE (from_slot IS NULL OR hour_start + 3600 > from_slot) AND (to_slot IS NULL OR hour_start < to_slot);
  RETURN metric_rollups_rebuild_slots(from_slot, to_slot);
END
$$;

-- The hourly sketches of what is stored already.
SELECT metric_rollup_sketches_refresh(NULL, NULL);
