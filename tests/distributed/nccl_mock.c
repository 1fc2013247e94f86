/* A mock libnccl for tests without a GPU, linked in front of the CUDA emulator (tests/gpu/emulator):
 * "device" memory is host memory, so collectives are memcpys. It also replaces the emulator's streams
 * and events: every cudaStreamCreateWithFlags gets its own stream, and NCCL work queued on a stream
 * runs in stream order, an entry (one collective, or one ncclGroupStart/End of sends and receives)
 * only when it is at the head of its stream and its peers' matching entries are at the heads of
 * theirs. So several ranks can run in one process (each with its own backend and stream), a rank
 * whose peer never posts never completes (the communicator's timeout must fire), and two ranks that
 * each post a lone send before their receive deadlock exactly as on a GPU. cudaEventQuery reports
 * whether the NCCL work before the event has run. Kernels and copies run at once (the emulator);
 * only NCCL work is deferred.
 *
 * NCCL's own reductions (ncclAllReduce, ncclReduceScatter) sum in REVERSE rank order and round after
 * every step (as a ring does, in another order than the group's), so a test can tell them from the
 * communicator's ordered sums. Supported reduction types: f32, f64, bf16, i32, i64, u8; ops sum, max.
 *
 * Test hooks: mock_nccl_counts (calls made), mock_nccl_set_async_error (every communicator reports
 * that error from ncclCommGetAsyncError), mock_nccl_stall (nothing completes while set). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <unistd.h>

#define MAXR 64
enum { S_OK = 0, S_SYSTEM = 2, S_INTERNAL = 3, S_INVALID_ARG = 4, S_INVALID_USAGE = 5 };

typedef struct Clique Clique;
typedef struct {
  Clique* cl;
  int rank, seq, aborted;
} Comm;
struct Clique {
  uint64_t key[2];
  int nranks;
  Comm* members[MAXR];
};

/* One p2p operation inside an entry. */
typedef struct {
  Comm* comm;
  int send, peer, matched;
  char* buf;
  size_t bytes;
} P2p;

typedef struct {
  int stream, done, coll; /* coll: 1 = collective, 0 = p2p group */
  /* collective */
  Comm* comm;
  int seq, kind, dtype, op, root;
  const char* sendbuf;
  char* recvbuf;
  size_t count;
  /* p2p group */
  P2p* ops;
  int nops, cap;
} Entry;

enum { K_ALLREDUCE, K_ALLGATHER, K_REDUCESCATTER, K_BROADCAST };

static Clique* cliques[256];
static int ncliques = 0;
static Entry* entries = NULL;
static int nentries = 0, entries_cap = 0;
/* per stream: the entries queued on it, in order, and the index of the first not done */
typedef struct {
  int* idx;
  int n, cap, head;
} Stream;
static Stream streams[256];
static int nstreams = 0;
/* entries below this index are all done (scans start here) */
static int scan_from = 0;
static int async_error = 0, stall = 0, group_depth = 0, group_entry = -1;
/* counts: init, destroy, abort, groupStart, groupEnd, p2p in a group, p2p outside, collectives, uniqueIds */
static int counts[9];

static int stream_id(void* s) {
  uintptr_t v = (uintptr_t)s;
  if (v < 0x9000 || (v - 0x9000) % 16 != 0 || (int)((v - 0x9000) / 16) >= nstreams) return -1;
  return (int)((v - 0x9000) / 16);
}

int cudaStreamCreateWithFlags(void** s, unsigned f) {
  if (nstreams >= 256) return 2;
  memset(&streams[nstreams], 0, sizeof(Stream));
  *s = (void*)(uintptr_t)(0x9000 + 16 * nstreams++);
  return 0;
}
int cudaStreamDestroy(void* s) { return 0; }

static void progress(void);
static int stream_idle(int sid, int upto) {
  Stream* st = &streams[sid];
  for (int i = st->head; i < st->n && st->idx[i] <= upto; i++)
    if (!entries[st->idx[i]].done) return 0;
  return 1;
}
/* "Blocking" waits cannot block here: report NCCL work still queued as an error instead of hanging. */
int cudaStreamSynchronize(void* s) {
  int sid = stream_id(s);
  progress();
  if (sid >= 0 && !stream_idle(sid, 1 << 30)) return 999;
  return 0;
}
typedef struct { int stream, upto; } Event;
int cudaEventCreate(void** e) { *e = calloc(1, sizeof(Event)); return 0; }
int cudaEventDestroy(void* e) { free(e); return 0; }
int cudaEventRecord(void* e, void* s) {
  Event* ev = (Event*)e;
  ev->stream = stream_id(s);
  ev->upto = nentries - 1;
  return 0;
}
int cudaEventQuery(void* e) {
  Event* ev = (Event*)e;
  progress();
  return ev->stream < 0 || stream_idle(ev->stream, ev->upto) ? 0 : 600;
}
int cudaEventSynchronize(void* e) { return cudaEventQuery(e) == 0 ? 0 : 999; }

/* ---- NCCL ---- */
const char* ncclGetErrorString(int r) {
  switch (r) {
    case 0: return "no error";
    case 1: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case 2: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case 3: return "internal error - please report this issue to the NCCL developers";
    case 4: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case 5: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case 6: return "remote process exited or there was a network error";
    case 7: return "NCCL operation in progress";
  }
  return "unknown result code";
}
int ncclGetVersion(int* v) { *v = 22105; return 0; }
static uint64_t next_id = 1;
int ncclGetUniqueId(void* id) {
  uint64_t* u = (uint64_t*)id;
  memset(id, 0, 128);
  u[0] = 0x4d4f434b4e43434cULL; /* "MOCKNCCL" */
  u[1] = ((uint64_t)getpid() << 32) | next_id++;
  counts[8]++;
  return 0;
}
typedef struct { uint64_t w[16]; } UniqueId;
int ncclCommInitRank(void** out, int nranks, UniqueId id, int rank) {
  if (nranks < 1 || nranks > MAXR || rank < 0 || rank >= nranks) return S_INVALID_ARG;
  if (id.w[0] != 0x4d4f434b4e43434cULL) return S_INVALID_ARG;
  Clique* cl = NULL;
  for (int i = 0; i < ncliques; i++)
    if (cliques[i]->key[0] == id.w[0] && cliques[i]->key[1] == id.w[1]) cl = cliques[i];
  if (!cl) {
    if (ncliques >= 256) return S_INTERNAL;
    cl = calloc(1, sizeof(Clique));
    cl->key[0] = id.w[0];
    cl->key[1] = id.w[1];
    cl->nranks = nranks;
    cliques[ncliques++] = cl;
  }
  if (cl->nranks != nranks || cl->members[rank]) return S_INVALID_USAGE;
  Comm* c = calloc(1, sizeof(Comm));
  c->cl = cl;
  c->rank = rank;
  cl->members[rank] = c;
  *out = c;
  counts[0]++;
  return 0;
}
int ncclCommGetAsyncError(void* comm, int* err) { *err = async_error; return 0; }
static void abandon(Comm* c) {
  /* Aborting releases the stream: this communicator's queued work is dropped. */
  for (int i = scan_from; i < nentries; i++) {
    Entry* e = &entries[i];
    if (e->done) continue;
    if (e->coll ? e->comm == c : (e->nops > 0 && e->ops[0].comm == c)) e->done = 1;
  }
  for (int i = 0; i < c->cl->nranks; i++)
    if (c->cl->members[i] == c) c->cl->members[i] = NULL;
}
int ncclCommAbort(void* comm) {
  abandon((Comm*)comm);
  counts[2]++;
  return 0;
}
int ncclCommDestroy(void* comm) {
  abandon((Comm*)comm);
  counts[1]++;
  return 0;
}

static Entry* new_entry(int sid) {
  if (nentries == entries_cap) {
    entries_cap = entries_cap ? 2 * entries_cap : 1024;
    entries = realloc(entries, entries_cap * sizeof(Entry));
  }
  Entry* e = &entries[nentries];
  memset(e, 0, sizeof(Entry));
  e->stream = sid;
  Stream* st = &streams[sid];
  if (st->n == st->cap) {
    st->cap = st->cap ? 2 * st->cap : 256;
    st->idx = realloc(st->idx, st->cap * sizeof(int));
  }
  st->idx[st->n++] = nentries++;
  return e;
}

static int esize(int dt) {
  switch (dt) {
    case 0: case 1: return 1;
    case 2: case 3: case 7: return 4;
    case 4: case 5: case 8: return 8;
    case 6: case 9: return 2;
  }
  return 0;
}
static float bf2f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }
static uint16_t f2bf(float f) { uint32_t u; memcpy(&u, &f, 4); u += 0x7fff + ((u >> 16) & 1); return (uint16_t)(u >> 16); }
/* acc[i] = acc[i] (op) x[i], rounded to the type (one ring step). */
static void combine(char* acc, const char* x, size_t n, int dt, int op) {
  for (size_t i = 0; i < n; i++) {
#define RED(T) { T a, b; memcpy(&a, acc + i * sizeof(T), sizeof(T)); memcpy(&b, x + i * sizeof(T), sizeof(T)); \
    T r = op == 0 ? (T)(a + b) : (b > a ? b : a); memcpy(acc + i * sizeof(T), &r, sizeof(T)); }
    switch (dt) {
      case 1: RED(uint8_t) break;
      case 2: RED(int32_t) break;
      case 4: RED(int64_t) break;
      case 7: RED(float) break;
      case 8: RED(double) break;
      case 9: {
        uint16_t a, b;
        memcpy(&a, acc + 2 * i, 2);
        memcpy(&b, x + 2 * i, 2);
        float fa = bf2f(a), fb = bf2f(b);
        uint16_t r = f2bf(op == 0 ? fa + fb : (fb > fa ? fb : fa));
        memcpy(acc + 2 * i, &r, 2);
        break;
      }
    }
#undef RED
  }
}

static int at_head(Entry* e) {
  Stream* st = &streams[e->stream];
  return st->head < st->n && &entries[st->idx[st->head]] == e;
}

/* The k-th collective of every member, if all are at the heads of their streams. */
static int run_collective(Entry* e) {
  Clique* cl = e->comm->cl;
  int n = cl->nranks;
  Entry* m[MAXR];
  for (int r = 0; r < n; r++) {
    m[r] = NULL;
    for (int i = scan_from; i < nentries && !m[r]; i++) {
      Entry* x = &entries[i];
      if (!x->done && x->coll && x->comm == cl->members[r] && x->seq == e->seq) m[r] = x;
    }
    if (!m[r] || !at_head(m[r])) return 0;
  }
  for (int r = 1; r < n; r++)
    if (m[r]->kind != e->kind || m[r]->count != e->count || m[r]->dtype != e->dtype) {
      async_error = S_INVALID_USAGE; /* mismatched collectives: NCCL would hang or corrupt */
      return 0;
    }
  size_t es = esize(e->dtype);
  switch (e->kind) {
    case K_ALLGATHER: {
      size_t b = e->count * es;
      char* tmp = malloc(b * n + 1);
      for (int r = 0; r < n; r++) memcpy(tmp + r * b, m[r]->sendbuf, b);
      for (int r = 0; r < n; r++) memcpy(m[r]->recvbuf, tmp, b * n);
      free(tmp);
      break;
    }
    case K_BROADCAST: {
      size_t b = e->count * es;
      char* tmp = malloc(b + 1);
      memcpy(tmp, m[e->root]->sendbuf, b);
      for (int r = 0; r < n; r++) memcpy(m[r]->recvbuf, tmp, b);
      free(tmp);
      break;
    }
    case K_ALLREDUCE:
    case K_REDUCESCATTER: {
      size_t total = (e->kind == K_ALLREDUCE ? e->count : e->count * n) * es;
      char* acc = malloc(total + 1);
      memcpy(acc, m[n - 1]->sendbuf, total);
      for (int r = n - 2; r >= 0; r--) combine(acc, m[r]->sendbuf, total / es, e->dtype, e->op);
      for (int r = 0; r < n; r++) {
        if (e->kind == K_ALLREDUCE) memcpy(m[r]->recvbuf, acc, total);
        else memcpy(m[r]->recvbuf, acc + r * e->count * es, e->count * es);
      }
      free(acc);
      break;
    }
  }
  for (int r = 0; r < n; r++) m[r]->done = 1;
  return 1;
}

/* Matches the unmatched operations of a p2p group with their peers' head groups (in posting order). */
static int run_p2p(Entry* e) {
  int changed = 0;
  for (int i = 0; i < e->nops; i++) {
    P2p* o = &e->ops[i];
    if (o->matched) continue;
    Comm* peer = o->comm->cl->members[o->peer];
    if (!peer) continue;
    for (int s = 0; s < nstreams && !o->matched; s++) {
      Stream* st = &streams[s];
      if (st->head >= st->n) continue;
      Entry* h = &entries[st->idx[st->head]];
      if (h->done || h->coll) continue;
      for (int j = 0; j < h->nops; j++) {
        P2p* q = &h->ops[j];
        if (q->matched || q->comm != peer || q->send == o->send || q->peer != o->comm->rank) continue;
        P2p* snd = o->send ? o : q;
        P2p* rcv = o->send ? q : o;
        if (snd->bytes != rcv->bytes) async_error = S_INVALID_USAGE; /* truncation */
        memcpy(rcv->buf, snd->buf, snd->bytes < rcv->bytes ? snd->bytes : rcv->bytes);
        o->matched = q->matched = 1;
        changed = 1;
        break;
      }
    }
  }
  return changed;
}

static void advance_heads(void) {
  while (scan_from < nentries && entries[scan_from].done) scan_from++;
  for (int s = 0; s < nstreams; s++) {
    Stream* st = &streams[s];
    while (st->head < st->n) {
      Entry* e = &entries[st->idx[st->head]];
      if (!e->done && !e->coll && e->nops > 0) {
        int all = 1;
        for (int i = 0; i < e->nops; i++) all &= e->ops[i].matched;
        if (all) e->done = 1;
      }
      if (!e->done) break;
      st->head++;
    }
  }
}

static void progress(void) {
  if (stall) return;
  for (int changed = 1; changed;) {
    changed = 0;
    advance_heads();
    for (int s = 0; s < nstreams; s++) {
      Stream* st = &streams[s];
      if (st->head >= st->n) continue;
      Entry* e = &entries[st->idx[st->head]];
      if (e->done) continue;
      if (e->coll ? run_collective(e) : run_p2p(e)) changed = 1;
    }
  }
  advance_heads();
}

static int post_coll(int kind, const void* s, void* r, size_t count, int dt, int op, int root, void* comm, void* stream) {
  Comm* c = (Comm*)comm;
  int sid = stream_id(stream);
  if (!c || sid < 0) return S_INVALID_ARG;
  if (esize(dt) == 0) return S_INVALID_ARG;
  if ((kind == K_ALLREDUCE || kind == K_REDUCESCATTER) && (op > 2 || op == 1 || dt == 0 || dt == 3 || dt == 5 || dt == 6))
    return S_INVALID_ARG;
  if (kind == K_BROADCAST && (root < 0 || root >= c->cl->nranks)) return S_INVALID_ARG;
  if (group_depth > 0) return S_INVALID_USAGE; /* the communicator never groups collectives */
  Entry* e = new_entry(sid);
  e->coll = 1;
  e->comm = c;
  e->seq = c->seq++;
  e->kind = kind;
  e->sendbuf = (const char*)s;
  e->recvbuf = (char*)r;
  e->count = count;
  e->dtype = dt;
  e->op = op;
  e->root = root;
  counts[7]++;
  progress();
  return 0;
}
int ncclAllReduce(const void* s, void* r, size_t n, int dt, int op, void* comm, void* st) {
  return post_coll(K_ALLREDUCE, s, r, n, dt, op, 0, comm, st);
}
int ncclAllGather(const void* s, void* r, size_t n, int dt, void* comm, void* st) {
  return post_coll(K_ALLGATHER, s, r, n, dt, 0, 0, comm, st);
}
int ncclReduceScatter(const void* s, void* r, size_t n, int dt, int op, void* comm, void* st) {
  return post_coll(K_REDUCESCATTER, s, r, n, dt, op, 0, comm, st);
}
int ncclBroadcast(const void* s, void* r, size_t n, int dt, int root, void* comm, void* st) {
  return post_coll(K_BROADCAST, s, r, n, dt, 0, root, comm, st);
}

int ncclGroupStart(void) {
  if (group_depth++ == 0) group_entry = -1;
  counts[3]++;
  return 0;
}
int ncclGroupEnd(void) {
  if (group_depth == 0) return S_INVALID_USAGE;
  counts[4]++;
  if (--group_depth == 0) {
    group_entry = -1;
    progress();
  }
  return 0;
}
static int post_p2p(int send, void* buf, size_t count, int dt, int peer, void* comm, void* stream) {
  Comm* c = (Comm*)comm;
  int sid = stream_id(stream);
  if (!c || sid < 0 || esize(dt) == 0 || peer < 0 || peer >= c->cl->nranks) return S_INVALID_ARG;
  Entry* e;
  if (group_depth > 0 && group_entry >= 0) {
    e = &entries[group_entry];
    if (e->stream != sid) return S_INVALID_USAGE;
  } else {
    e = new_entry(sid);
    if (group_depth > 0) group_entry = (int)(e - entries);
  }
  if (e->nops == e->cap) {
    e->cap = e->cap ? 2 * e->cap : 8;
    e->ops = realloc(e->ops, e->cap * sizeof(P2p));
  }
  P2p* o = &e->ops[e->nops++];
  o->comm = c;
  o->send = send;
  o->peer = peer;
  o->matched = 0;
  o->buf = (char*)buf;
  o->bytes = count * esize(dt);
  counts[group_depth > 0 ? 5 : 6]++;
  if (group_depth == 0) progress();
  return 0;
}
int ncclSend(const void* buf, size_t count, int dt, int peer, void* comm, void* stream) {
  return post_p2p(1, (void*)buf, count, dt, peer, comm, stream);
}
int ncclRecv(void* buf, size_t count, int dt, int peer, void* comm, void* stream) {
  return post_p2p(0, buf, count, dt, peer, comm, stream);
}

/* ---- test hooks ---- */
void mock_nccl_counts(int* out) { memcpy(out, counts, sizeof counts); }
void mock_nccl_set_async_error(int e) { async_error = e; }
void mock_nccl_stall(int on) { stall = on; }
