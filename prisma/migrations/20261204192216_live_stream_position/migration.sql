-- The live stream's position of a row (README: "`metricIngested`: live records"): the transaction that stored it, then its id. Ids are
-- taken before commit, so concurrent batches commit out of id order; (txid, id) below the oldest running transaction
-- (pg_snapshot_xmin) is final: no row can appear there later, which lets a subscriber resume without gaps.
--
-- pg_current_xact_id() is STABLE, so the rows already stored get the migration's own transaction id without a
-- rewrite of the table (a "fast default"); they keep their id order after it. New rows, COPY's included (their column
-- lists leave txid out), get their own transaction's id.

-- AlterTable
ALTER TABLE "user_metrics" ADD COLUMN "txid" xid8 NOT NULL DEFAULT pg_current_xact_id();

-- CreateIndex
CREATE INDEX "user_metrics_txid_id_idx" ON "user_metrics"("txid", "id");
