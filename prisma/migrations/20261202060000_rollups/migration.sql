-- Rollups of user_metrics per 15-minute slot (UTC-aligned: slot_start is a multiple of 900), so that metricStats can
-- answer from them (README: "Rollups"). Every quarter-hour boundary is an hour/day/week/month boundary of any
-- tz-database zone since 2000 (offsets such as +05:30 and +05:45 included), so slots bucket exactly in every zone.
-- metric_rollups is kept by a statement-level trigger on INSERT from the rows the statement actually stored (its
-- transition table): every write path (ingestion's COPY and INSERT ... ON CONFLICT DO NOTHING, the importer) at once,
-- duplicates and rejected records never counted, and in the statement's transaction, so a failed COPY adds nothing.
-- The sketches (metric_rollup_sketches) are not built on ingestion, where a batch spread over many slots would pay
-- for a 65,536-bit bitmap per slot: a sketch records how many records it covers, a reader uses it only while that
-- equals the slot's rollup count (else the slot's raw rows), and metric_rollup_sketches_refresh builds the stale ones.
-- Deleting raw rows (retention) leaves rollups as they are: they outlive the raw data.

-- CreateTable
CREATE TABLE "metric_rollups" (
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
    "last_timestamp" BIGINT NOT NULL,

    CONSTRAINT "metric_rollups_pkey" PRIMARY KEY ("slot_start","has_sentiment","voice_sentiment","microphone_used","speaker_used")
);

-- Room on each page for a row's next version: the trigger updates rows in place (HOT), without a new index entry per
-- update (measured: a batch spread over a month ~30% cheaper to roll up than at the default fillfactor).
ALTER TABLE "metric_rollups" SET (fillfactor = 50);

-- CreateTable
CREATE TABLE "metric_rollup_sketches" (
    "slot_start" BIGINT NOT NULL,
    "count" BIGINT NOT NULL,
    "user_bits" VARBIT NOT NULL,
    "talked_histogram" INTEGER[],
    "talked_coarse" INTEGER[],

    CONSTRAINT "metric_rollup_sketches_pkey" PRIMARY KEY ("slot_start")
);

-- The sketches (README: "Rollups", approximate figures). Plain SQL, so that the embedded database has them too.

-- A user's bit in a 65,536-bit bitmap: the first 16 bits of the MD5 of the id (stable across PostgreSQL versions).
CREATE FUNCTION metric_user_position(user_id text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ('x' || substr(md5(user_id), 1, 4))::bit(16)::integer $$;

-- The bitmap with the given positions set, built word by word (1,024 words of 64 bits), not bit by bit.
CREATE FUNCTION metric_user_bits(positions integer[]) RETURNS varbit
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT string_agg(coalesce(w.bits, 0)::bit(64)::text, '' ORDER BY i)::varbit
  FROM generate_series(0, 1023) AS i
  LEFT JOIN (
    SELECT p >> 6 AS word, bit_or(1::int8 << (63 - (p & 63))) AS bits FROM unnest(positions) AS p GROUP BY 1
  ) AS w ON w.word = i
$$;

-- Linear counting: n = -m ln(zeros / m) for a bitmap of m bits; a full bitmap answers m ln m, its largest estimate.
CREATE FUNCTION metric_distinct_estimate(bits varbit) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT CASE
    WHEN bit_count(bits) >= length(bits) THEN round(length(bits) * ln(length(bits)::float8))::bigint
    ELSE round(-length(bits) * ln((length(bits) - bit_count(bits))::float8 / length(bits)))::bigint
  END
$$;

-- A talked_time's histogram bucket: 1 for 0 s, else 2 + ceil(log_1.02(t)), the bucket (1.02^(k-1), 1.02^k].
CREATE FUNCTION metric_talked_bucket(talked_time integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN talked_time <= 0 THEN 1 ELSE 2 + ceil(ln(talked_time::float8) / ln(1.02::float8))::integer END $$;

-- A bucket's value: 2 * 1.02^k / 2.02, within 0.99% of every value of the bucket.
CREATE FUNCTION metric_talked_value(bucket integer) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN bucket <= 1 THEN 0::float8 ELSE 2 * power(1.02::float8, bucket - 2) / 2.02::float8 END $$;

-- Records per bucket, index = bucket, as long as the largest bucket present.
CREATE FUNCTION metric_talked_histogram(buckets integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT array_agg(coalesce(h.n, 0) ORDER BY i)
  FROM generate_series(1, (SELECT max(b) FROM unnest(buckets) AS b)) AS i
  LEFT JOIN (SELECT b, count(*)::integer AS n FROM unnest(buckets) AS b GROUP BY b) AS h ON h.b = i
$$;

-- The histogram in buckets of 16 (element i is the sum of elements 16(i-1)+1 .. 16i): a reader finds the coarse bucket
-- of a rank first and unnests only that part of each slot's histogram.
CREATE FUNCTION metric_histogram_coarse(h integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT array_agg(n ORDER BY c)
  FROM (SELECT (i - 1) / 16 AS c, sum(x)::integer AS n FROM unnest(h) WITH ORDINALITY AS u(x, i) GROUP BY 1) AS coarse
$$;

-- The trigger: the statement's new rows added to their slots. Rows go in in key order, so that concurrent batches
-- lock the rollup rows they share in the same order and never deadlock; ON CONFLICT DO UPDATE adds under the row's
-- lock, so no increment of a concurrent batch is lost.
CREATE FUNCTION metric_rollups_add() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  INSERT INTO metric_rollups AS r (slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used, count,
                                   talked_sum, talked_min, talked_max, first_timestamp, last_timestamp)
  SELECT "timestamp" - "timestamp" % 900, voice_sentiment IS NOT NULL, coalesce(voice_sentiment, ''), microphone_used,
         speaker_used, count(*), sum(talked_time), min(talked_time), max(talked_time), min("timestamp"), max("timestamp")
  FROM new_rows
  GROUP BY 1, 2, 3, 4, 5
  ORDER BY 1, 2, 3, 4, 5
  ON CONFLICT (slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used) DO UPDATE SET
    count = r.count + excluded.count,
    talked_sum = r.talked_sum + excluded.talked_sum,
    talked_min = least(r.talked_min, excluded.talked_min),
    talked_max = greatest(r.talked_max, excluded.talked_max),
    first_timestamp = least(r.first_timestamp, excluded.first_timestamp),
    last_timestamp = greatest(r.last_timestamp, excluded.last_timestamp);
  RETURN NULL;
END
$$;

CREATE TRIGGER metric_rollups_add
AFTER INSERT ON user_metrics
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION metric_rollups_add();

-- Builds the sketches of the slots in [from_slot, to_slot) (null: unbounded) that are missing or stale (their count is
-- not the slot's rollup count) from the slot's raw rows, when those are all there (their count is the rollup's: not
-- after retention deleted some). Read in one snapshot, so each sketch's count and bits agree. Answers the slots built.
CREATE FUNCTION metric_rollup_sketches_refresh(from_slot bigint, to_slot bigint) RETURNS bigint
LANGUAGE sql
AS $$
  WITH rolled AS (
    SELECT slot_start, sum(count)::bigint AS n FROM metric_rollups
    WHERE (from_slot IS NULL OR slot_start >= from_slot) AND (to_slot IS NULL OR slot_start < to_slot)
    GROUP BY slot_start
  ), stale AS (
    SELECT r.slot_start, r.n FROM rolled AS r LEFT JOIN metric_rollup_sketches AS s USING (slot_start)
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
  SELECT count(*) FROM stored
$$;

-- Recomputes the slots in [from_slot, to_slot) (null: unbounded) from the raw rows (npm run rollups -- rebuild, and
-- the backfill below). Inserts wait meanwhile (SHARE lock), so that none is counted twice or lost. Slots without raw
-- rows are left as they are: rollups outlive raw rows that retention deleted. Answers the slots rebuilt.
CREATE FUNCTION metric_rollups_rebuild(from_slot bigint, to_slot bigint) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
  rebuilt bigint;
BEGIN
  LOCK TABLE user_metrics IN SHARE MODE;
  CREATE TEMPORARY TABLE metric_rollups_rebuilt ON COMMIT DROP AS
    SELECT DISTINCT "timestamp" - "timestamp" % 900 AS slot_start FROM user_metrics
    WHERE (from_slot IS NULL OR "timestamp" >= from_slot) AND (to_slot IS NULL OR "timestamp" < to_slot);
  DELETE FROM metric_rollups WHERE slot_start IN (SELECT slot_start FROM metric_rollups_rebuilt);
  DELETE FROM metric_rollup_sketches WHERE slot_start IN (SELECT slot_start FROM metric_rollups_rebuilt);
  INSERT INTO metric_rollups (slot_start, has_sentiment, voice_sentiment, microphone_used, speaker_used, count,
                              talked_sum, talked_min, talked_max, first_timestamp, last_timestamp)
  SELECT "timestamp" - "timestamp" % 900, voice_sentiment IS NOT NULL, coalesce(voice_sentiment, ''), microphone_used,
         speaker_used, count(*), sum(talked_time), min(talked_time), max(talked_time), min("timestamp"), max("timestamp")
  FROM user_metrics
  WHERE (from_slot IS NULL OR "timestamp" >= from_slot) AND (to_slot IS NULL OR "timestamp" < to_slot)
  GROUP BY 1, 2, 3, 4, 5;
  INSERT INTO metric_rollup_sketches (slot_start, count, user_bits, talked_histogram, talked_coarse)
  SELECT slot_start, n, user_bits, talked_histogram, metric_histogram_coarse(talked_histogram)
  FROM (
    SELECT slot_start, count(*) AS n, metric_user_bits(array_agg(metric_user_position(user_id))) AS user_bits,
           metric_talked_histogram(array_agg(metric_talked_bucket(talked_time))) AS talked_histogram
    FROM (
      SELECT "timestamp" - "timestamp" % 900 AS slot_start, user_id, talked_time FROM user_metrics
      WHERE (from_slot IS NULL OR "timestamp" >= from_slot) AND (to_slot IS NULL OR "timestamp" < to_slot)
    ) AS n
    GROUP BY slot_start
  ) AS built;
  SELECT count(*) INTO rebuilt FROM metric_rollups_rebuilt;
  DROP TABLE metric_rollups_rebuilt;
  RETURN rebuilt;
END
$$;

-- Backfill: the rows stored before this migration.
SELECT metric_rollups_rebuild(NULL, NULL);
