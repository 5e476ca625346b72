-- How far back raw rows are kept (README: "Storage: time partitions, retention"): retention writes it before it drops
-- a partition; metricStats and userSummary refuse a question whose raw rows reach before it instead of answering from
-- what is left, while the rollups go on answering those ranges. One row per partitioned table ('user_metrics').

-- CreateTable
CREATE TABLE "metric_retention" (
    "relation" TEXT NOT NULL,
    "raw_rows_from" BIGINT NOT NULL,
    "updated_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "metric_retention_pkey" PRIMARY KEY ("relation")
);
