-- CreateTable
CREATE TABLE "user_metrics" (
    "id" SERIAL NOT NULL,
    "record_key" BYTEA NOT NULL,
    "event_id" VARCHAR(255),
    "user_id" VARCHAR(255) NOT NULL,
    "session_id" VARCHAR(255) NOT NULL,
    "timestamp" BIGINT NOT NULL,
    "talked_time" INTEGER NOT NULL,
    "microphone_used" BOOLEAN NOT NULL,
    "speaker_used" BOOLEAN NOT NULL,
    "voice_sentiment" VARCHAR(50),
    "created_at" TIMESTAMPTZ(6) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "user_metrics_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "user_metrics_record_key_key" ON "user_metrics"("record_key");

-- CreateIndex
CREATE INDEX "user_metrics_user_id_timestamp_idx" ON "user_metrics"("user_id" varchar_pattern_ops, "timestamp");

-- CreateIndex
CREATE INDEX "user_metrics_session_id_idx" ON "user_metrics"("session_id" varchar_pattern_ops);

-- CreateIndex
CREATE INDEX "user_metrics_timestamp_idx" ON "user_metrics"("timestamp");
