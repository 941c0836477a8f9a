-- Keyword search ranks the newest matches of a query, and every match of its rare words (see
-- search_keyword in queries.sql). Which words are common comes from ANALYZE's statistics on
-- memories.search: the lexemes of its most-common list that min_rows or more rows contain. The store
-- reads this list now and then (it changes only when the table is analysed), not on every search.
-- SECURITY DEFINER: under row-level security, pg_stats hides the table's statistics from the app role.
-- Only word counts leave it, never a memory.
CREATE FUNCTION stackmemory_common_words(min_rows real) RETURNS SETOF text LANGUAGE sql STABLE
SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT e.lexeme
      FROM pg_stats AS s
      JOIN pg_class AS c ON c.oid = to_regclass('public.memories')
     CROSS JOIN LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e (lexeme, freq)
     WHERE s.schemaname = 'public' AND s.tablename = 'memories' AND s.attname = 'search'
       AND e.lexeme IS NOT NULL AND e.freq * greatest(c.reltuples, 0) >= min_rows
$$;
