-- The change feed (issue #17): every instance created, updated or deleted, numbered in
-- the order the changes became visible.
--
-- A transaction that changes instances writes change_log rows (by the triggers below,
-- whatever the code path: STOW, DIMSE, import, restore, delete, rejection, purge of a
-- re-sent instance; corrections and merges write 'update' rows themselves). Numbers
-- are given later, by one mover at a time (app/index/feed.py), to committed rows only:
-- a sequence taken inside the writing transaction would let a transaction that commits
-- late make an entry appear below what a reader has already read. So Sequence N+1 is
-- never visible before N, and none ever appears below the highest one visible.
CREATE TABLE change_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    action      text NOT NULL,
    study_uid   text NOT NULL,
    series_uid  text NOT NULL,
    sop_uid     text NOT NULL
);

CREATE TABLE change_feed (
    seq         bigint PRIMARY KEY,
    at          timestamptz NOT NULL,
    action      text NOT NULL,
    study_uid   text NOT NULL,
    series_uid  text NOT NULL,
    sop_uid     text NOT NULL
);
-- an entry's state (current, replaced, deleted) is the later entries of its instance
CREATE INDEX change_feed_sop ON change_feed (sop_uid, seq);
CREATE INDEX change_feed_at ON change_feed (at);

-- one function for both triggers: the transition table has the same name in each
CREATE FUNCTION change_log_instances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (action, study_uid, series_uid, sop_uid)
    SELECT CASE TG_OP WHEN 'INSERT' THEN 'create' ELSE 'delete' END,
           st.study_uid, se.series_uid, c.sop_instance_uid
      FROM changed_rows c
      JOIN series se ON se.pk = c.series_pk
      JOIN study st ON st.pk = c.study_pk
     ORDER BY c.pk;
    PERFORM pg_notify('pictor_feed', '');
    RETURN NULL;
END;
$$;

-- once per statement, with all its rows (ingest inserts a whole batch in one)
CREATE TRIGGER instance_created AFTER INSERT ON instance
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION change_log_instances();
CREATE TRIGGER instance_deleted AFTER DELETE ON instance
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION change_log_instances();

-- what the archive holds already: one 'create' each, in the order they were stored
INSERT INTO change_feed (seq, at, action, study_uid, series_uid, sop_uid)
SELECT row_number() OVER (ORDER BY i.created_at, i.pk), i.created_at, 'create',
       st.study_uid, se.series_uid, i.sop_instance_uid
  FROM instance i
  JOIN series se ON se.pk = i.series_pk
  JOIN study st ON st.pk = i.study_pk;
