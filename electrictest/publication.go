package electrictest

import (
	"context"
	"fmt"
)

// openPublication readies the publication to follow: the one named by
// Options.Publication, which must exist, or else one of the server's own,
// created here under its name.
func (s *Server) openPublication(ctx context.Context) error {
	if s.opts.Publication == "" {
		if err := s.execRW(ctx, "CREATE PUBLICATION "+s.pub); err != nil {
			return fmt.Errorf("electrictest: create publication: %w", err)
		}
		return nil
	}
	s.pub, s.manual = s.opts.Publication, true
	var exists bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", s.pub).Scan(&exists); err != nil {
		return fmt.Errorf("electrictest: look up publication %s: %w", quoteIdent(s.pub), err)
	}
	if !exists {
		return fmt.Errorf("electrictest: there is no publication %s (Options.Publication) in this database", quoteIdent(s.pub))
	}
	return nil
}

// publish adds a table to the publication, with REPLICA IDENTITY FULL; with
// Options.Publication, it checks that the table is published so.
func (s *Server) publish(ctx context.Context, t *table) error {
	if s.published[t.oid] {
		return nil
	}
	if s.manual {
		return s.checkPublished(ctx, t)
	}
	stmts := []string{"ALTER PUBLICATION " + s.pub + " ADD TABLE " + t.rel.Quoted()}
	var ident string
	err := s.pool.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", t.rel.Quoted()).Scan(&ident)
	if err != nil {
		return err
	}
	if ident != "f" {
		stmts = append([]string{"ALTER TABLE " + t.rel.Quoted() + " REPLICA IDENTITY FULL"}, stmts...)
	}
	if err := s.execRW(ctx, stmts...); err != nil {
		return fmt.Errorf("electrictest: publish %s: %w", t.rel, err)
	}
	s.published[t.oid] = true
	return nil
}

// checkPublished checks, without changing anything, that a table is in the
// publication of Options.Publication with REPLICA IDENTITY FULL, as Electric
// does with ELECTRIC_MANUAL_TABLE_PUBLISHING; it fails with Electric's
// messages. A table found so is not checked again.
func (s *Server) checkPublished(ctx context.Context, t *table) error {
	var in bool
	var ident string
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3),
		(SELECT relreplident::text FROM pg_class WHERE oid = $4)`, s.pub, t.rel.Schema, t.rel.Name, t.oid).Scan(&in, &ident)
	if err != nil {
		return err
	}
	if !in {
		return &configError{fmt.Sprintf("Database table %s is missing from the publication %s and manual table publishing (Options.Publication) prevents electrictest from adding it",
			t.rel.Quoted(), quoteIdent(s.pub))}
	}
	if ident != "f" {
		return &configError{fmt.Sprintf("Database table %s does not have its replica identity set to FULL", t.rel.Quoted())}
	}
	s.published[t.oid] = true
	return nil
}

// configError is a table that the database is not configured to serve
// (Electric's DbConfigurationError): 503 with retry-after 10.
type configError struct{ msg string }

func (e *configError) Error() string { return "electrictest: " + e.msg }
