package client

// A Shape of a subquery shape against electrictest: rows move in and out
// as memberships change, announced by move-in and move-out events (no
// deletes), and the Shape applies them through the rows' tags.

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/electrictest"
)

const subqueryWhere = `tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)`

const subqueryState = `SELECT format('"public"."items"/"%s"', id), tenant_id::text || '|' || title
	FROM items WHERE tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = 1)`

type subItem struct {
	ID       int64  `shape:"id"`
	TenantID int64  `shape:"tenant_id"`
	Title    string `shape:"title"`
}

// batchLog records a shape's view at each up-to-date, to be matched against
// the sequence of the database's states.
type batchLog struct {
	mu    sync.Mutex
	views []map[string]string
	next  int // views before it are checked
}

func (l *batchLog) add(v map[string]string) {
	l.mu.Lock()
	l.views = append(l.views, v)
	l.mu.Unlock()
}

// check matches every view recorded since the last check to a state, in
// order: a view never goes back to an older state. It returns the index
// of the last view's state.
func (l *batchLog) check(t *testing.T, name string, states []map[string]string, from int) int {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	j := from
	for ; l.next < len(l.views); l.next++ {
		v := l.views[l.next]
		k := j
		for k < len(states) && !maps.Equal(states[k], v) {
			k++
		}
		if k == len(states) {
			t.Fatalf("%s: view at up-to-date %d is no state from %d on: %v\nstates %v", name, l.next, j, v, states[j:])
		}
		j = k
	}
	return j
}

func TestElectricSubqueryShape(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	s := newSubqueryRun(t, rand.New(rand.NewPCG(seed, 1)))
	stop := s.startShapes()
	defer stop()
	s.converge(0)
	s.randomSteps(40)
}

// subqueryRun is the state TestElectricSubqueryShape's steps share: the
// database, its states so far, and a Shape and a TypedShape of the
// subquery shape with the logs of their views.
type subqueryRun struct {
	t      *testing.T
	ctx    context.Context
	rng    *rand.Rand
	e      *env
	conn   *pgx.Conn
	nextID int

	// states: the database's states, one per transaction; each is read
	// inside its transaction, so it is known before any shape can see it.
	states []map[string]string

	sh           *Shape
	ts           *TypedShape[subItem]
	shLog, tsLog batchLog
	shAt, tsAt   int // the states the views were last matched to
}

// newSubqueryRun makes the tables, connects, and records the initial state.
func newSubqueryRun(t *testing.T, rng *rand.Rand) *subqueryRun {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond})
	e.exec(`CREATE TABLE memberships (user_id int, tenant_id int, PRIMARY KEY (user_id, tenant_id));
		CREATE TABLE items (id int PRIMARY KEY, tenant_id int, title text NOT NULL);
		INSERT INTO memberships VALUES (1, 1), (1, 2), (2, 3);
		INSERT INTO items SELECT i, i % 5, 't' || i FROM generate_series(1, 12) i`)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, e.db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	s := &subqueryRun{t: t, ctx: ctx, rng: rng, e: e, conn: conn, nextID: 100}
	s.write() // the initial state
	return s
}

// state reads the subquery shape's rows as q sees them.
func (s *subqueryRun) state(q pgx.Tx) map[string]string {
	t := s.t
	rows, err := q.Query(s.ctx, subqueryState)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		out[k] = v
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// write runs sqls in one transaction and records the state it commits.
func (s *subqueryRun) write(sqls ...string) {
	t, ctx := s.t, s.ctx
	t.Helper()
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, q := range sqls {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	st := s.state(tx)
	s.states = append(s.states, st)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// startShapes starts a Shape and a TypedShape of the subquery shape, each
// logging its view at every batch; stop stops them and reports their
// errors.
func (s *subqueryRun) startShapes() (stop func()) {
	t := s.t
	params := Params{Table: "items", Where: subqueryWhere, Params: []string{"1"}}
	s1, err := New(Options{URL: s.e.url, Params: params, Live: true, HTTPClient: testClient()})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := New(Options{URL: s.e.url, Params: params, Live: true, HTTPClient: testClient()})
	if err != nil {
		t.Fatal(err)
	}
	s.sh = NewShape(s1)
	s.sh.Subscribe(func(sh *Shape) {
		v := map[string]string{}
		for k, r := range sh.Rows() {
			v[k] = fmt.Sprint(r["tenant_id"], "|", r["title"])
		}
		s.shLog.add(v)
	})
	s.ts, err = NewTypedShape[subItem](s2)
	if err != nil {
		t.Fatal(err)
	}
	s.ts.Subscribe(func(*Batch[subItem]) { s.tsLog.add(s.typedView()) })

	runCtx, cancel := context.WithCancel(s.ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- s.sh.Run(runCtx) })
	wg.Go(func() { errs <- s.ts.Run(runCtx) })
	return func() {
		cancel()
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil && runCtx.Err() == nil {
				t.Error(err)
			}
		}
	}
}

func (s *subqueryRun) typedView() map[string]string {
	v := map[string]string{}
	for k, it := range s.ts.All() {
		v[k] = fmt.Sprint(it.TenantID, "|", it.Title)
		if k != fmt.Sprintf(`"public"."items"/"%d"`, it.ID) {
			s.t.Errorf("typed row %s = %+v", k, it)
		}
	}
	return v
}

// converge waits for both shapes to be up to date with the last state, and
// matches the views they logged to the states, in order.
func (s *subqueryRun) converge(step int) {
	t, sh := s.t, s.sh
	t.Helper()
	want := s.states[len(s.states)-1]
	deadline := time.Now().Add(10 * time.Second)
	for {
		shOK := sh.IsUpToDate() && maps.Equal(shView(sh), want)
		tsOK := s.ts.IsUpToDate() && maps.Equal(s.typedView(), want)
		if shOK && tsOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("step %d: not converged (Shape %v, TypedShape %v):\nShape      %v\nTypedShape %v\nwant       %v",
				step, shOK, tsOK, shView(sh), s.typedView(), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.shAt = s.shLog.check(t, "Shape", s.states, s.shAt)
	s.tsAt = s.tsLog.check(t, "TypedShape", s.states, s.tsAt)
}

// op is a random write: a membership added or removed, or an item
// inserted, retitled, moved to another tenant or deleted.
func (s *subqueryRun) op() string {
	rng := s.rng
	tenant := rng.IntN(6)
	user := 1
	if rng.IntN(4) == 0 {
		user = 2
	}
	switch rng.IntN(7) {
	case 0, 1:
		return fmt.Sprintf(`INSERT INTO memberships VALUES (%d, %d) ON CONFLICT DO NOTHING`, user, tenant)
	case 2:
		return fmt.Sprintf(`DELETE FROM memberships WHERE user_id = %d AND tenant_id = %d`, user, tenant)
	case 3:
		s.nextID++
		return fmt.Sprintf(`INSERT INTO items VALUES (%d, %d, 'n%d')`, s.nextID, tenant, s.nextID)
	case 4:
		return `UPDATE items SET title = title || 'x' WHERE id IN (SELECT id FROM items ORDER BY random() LIMIT 2)`
	case 5:
		return fmt.Sprintf(`UPDATE items SET tenant_id = %d WHERE id = (SELECT id FROM items ORDER BY random() LIMIT 1)`, tenant)
	default:
		return `DELETE FROM items WHERE id = (SELECT id FROM items ORDER BY random() LIMIT 1)`
	}
}

// randomSteps runs steps steps of random writes, the shapes converging
// after each.
func (s *subqueryRun) randomSteps(steps int) {
	t, rng := s.t, s.rng
	var moves int
	for step := 1; step <= steps; step++ {
		var sqls []string
		for range 1 + rng.IntN(3) {
			q := s.op()
			if strings.Contains(q, "memberships") {
				moves++
			}
			sqls = append(sqls, q)
		}
		// Several transactions before the shapes may catch up, now and then.
		s.write(sqls...)
		if rng.IntN(3) == 0 {
			s.write(s.op())
		}
		s.converge(step)
	}
	t.Logf("%d states, %d membership writes; Shape saw %d batches, TypedShape %d", len(s.states), moves, len(s.shLog.views), len(s.tsLog.views))
	if moves == 0 {
		t.Error("no membership changes")
	}
}

func shView(sh *Shape) map[string]string {
	v := map[string]string{}
	for k, r := range sh.Rows() {
		v[k] = fmt.Sprint(r["tenant_id"], "|", r["title"])
	}
	return v
}
