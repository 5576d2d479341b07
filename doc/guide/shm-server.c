/*
 * Integrating osslproc, case (d): a server whose workers share memory
 * (the OpenSIPS / Kamailio model).  OpenSSL's memory comes from a
 * process-shared backend: the built-in arena here, or the host's own
 * shared allocator.  Blocks are placed by fork generation: the parent's
 * stay private, so every worker inherits one consistent copy of OpenSSL's
 * state; a worker's go to the shared backend and belong to that worker.
 * Sessions cross processes as bytes, never as live objects.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <osslproc.h>

#define WORKERS 8
#define ARENA_BYTES ((size_t)64 << 20)
#define SLOTS 256
#define DER_MAX 2048

/* A host that has its own shared allocator (shm_malloc and friends)
 * describes it with this table instead of using the arena. */
struct host_shm {
	void *(*alloc)(size_t size);
	void (*release)(void *ptr);
};

static const struct host_shm *host_shm; /* NULL: use the arena */

/* The host's memory must be aligned to alignof(max_align_t) and usable
 * by every process that the caller forks afterwards. */
static void *
shm_malloc_adapter(size_t size, void *arg)
{
	const struct host_shm *shm = arg;

	return shm->alloc(size);
}

static void
shm_free_adapter(void *ptr, void *arg)
{
	const struct host_shm *shm = arg;

	shm->release(ptr);
}

/* ---- a session store in the host's own shared memory ---- */

struct session_slot {
	unsigned int id_len;
	unsigned char id[SSL_MAX_SSL_SESSION_ID_LENGTH];
	int der_len;
	unsigned char der[DER_MAX];
};

struct session_store {
	pthread_mutex_t lock; /* process-shared: the host's, not OpenSSL's */
	struct session_slot slot[SLOTS];
};

static struct session_store *store;

static int
store_create(void)
{
	pthread_mutexattr_t at;

	store = mmap(NULL, sizeof(*store), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (store == MAP_FAILED)
		return -1;
	pthread_mutexattr_init(&at);
	pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
	pthread_mutex_init(&store->lock, &at);
	pthread_mutexattr_destroy(&at);
	return 0;
}

static struct session_slot *
slot_for(const unsigned char *id, unsigned int id_len)
{
	return &store->slot[id_len ? id[0] % SLOTS : 0];
}

/* New session: serialise it into the store; OpenSSL keeps the object. */
static int
sess_new(SSL *ssl, SSL_SESSION *sess)
{
	unsigned char der[DER_MAX], *p = der;
	unsigned int id_len;
	const unsigned char *id = SSL_SESSION_get_id(sess, &id_len);
	int len = i2d_SSL_SESSION(sess, NULL);
	struct session_slot *s;

	(void)ssl;
	if (len <= 0 || len > DER_MAX || i2d_SSL_SESSION(sess, &p) != len)
		return 0;
	s = slot_for(id, id_len);
	pthread_mutex_lock(&store->lock);
	s->id_len = id_len;
	memcpy(s->id, id, id_len);
	s->der_len = len;
	memcpy(s->der, der, (size_t)len);
	pthread_mutex_unlock(&store->lock);
	return 0;
}

/* Resumption in any worker: a new SSL_SESSION in this process. */
static SSL_SESSION *
sess_get(SSL *ssl, const unsigned char *id, int id_len, int *copy)
{
	unsigned char der[DER_MAX];
	const unsigned char *p = der;
	struct session_slot *s = slot_for(id, (unsigned int)id_len);
	int len = 0;

	(void)ssl;
	*copy = 0;
	pthread_mutex_lock(&store->lock);
	if (s->id_len == (unsigned int)id_len &&
	    !memcmp(s->id, id, (size_t)id_len)) {
		len = s->der_len;
		memcpy(der, s->der, (size_t)len);
	}
	pthread_mutex_unlock(&store->lock);
	return len ? d2i_SSL_SESSION(NULL, &p, len) : NULL;
}

/* ---- workers ---- */

static SSL_CTX *
build_ctx(void *arg)
{
	static const unsigned char sid_ctx[] = "shm-server";
	const char *const *files = arg;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (!ctx)
		return NULL;
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER |
				       SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, sess_new);
	SSL_CTX_sess_set_get_cb(ctx, sess_get);
	if (SSL_CTX_set_session_id_context(ctx, sid_ctx,
					   sizeof(sid_ctx) - 1) != 1 ||
	    SSL_CTX_use_certificate_chain_file(ctx, files[0]) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, files[1],
					SSL_FILETYPE_PEM) != 1) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static int
listen_on(unsigned short port)
{
	struct sockaddr_in sa = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_ANY),
	};
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, 64) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Every SSL lives and dies in the worker that created it. */
static int
worker(struct ossl_proc_ctx *pc, int listen_fd, int connections)
{
	SSL_CTX *ctx = ossl_proc_ctx_get(pc);

	if (!ctx)
		return 1;
	while (connections-- > 0) {
		int fd = accept(listen_fd, NULL, NULL);
		SSL *ssl;

		if (fd < 0)
			return errno == EINTR ? 0 : 1;
		ssl = SSL_new(ctx);
		if (ssl && SSL_set_fd(ssl, fd) == 1 && SSL_accept(ssl) == 1) {
			SSL_write(ssl, "hello\n", 6);
			SSL_shutdown(ssl);
		}
		SSL_free(ssl);
		close(fd);
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char *files[2] = { "server.pem", "server.key" };
	struct ossl_proc_config cfg = OSSL_PROC_CONFIG_INIT;
	struct ossl_proc_allocator host_al = {
		.malloc = shm_malloc_adapter,
		.free = shm_free_adapter,
		.arg = (void *)host_shm,
		.shared = 1,
	};
	struct ossl_proc_arena_stats as = { .size = sizeof(as) };
	struct ossl_proc_arena *arena = NULL;
	struct ossl_proc_ctx *pc;
	int listen_fd, rc;
	pid_t pid;

	/* The shared mapping must exist before the first fork, so that
	 * every worker sees it at the same address. */
	if (host_shm) {
		cfg.allocator = &host_al;
	} else {
		arena = ossl_proc_arena_new(ARENA_BYTES);
		if (!arena) {
			perror("ossl_proc_arena_new");
			return 1;
		}
		cfg.allocator = ossl_proc_arena_allocator(arena);
	}
	rc = ossl_proc_init(&cfg);
	if (rc < 0) {
		fprintf(stderr, "ossl_proc_init: %s\n", strerror(-rc));
		return 1;
	}
	if (argc > 2) {
		files[0] = argv[1];
		files[1] = argv[2];
	}
	/* Generation 0: everything the parent allocates is private. */
	pc = ossl_proc_ctx_new(build_ctx, files);
	if (!pc || !ossl_proc_ctx_get(pc) || store_create() < 0)
		return 1;
	listen_fd = listen_on(5061);
	if (listen_fd < 0)
		return 1;

	/* Fork from here, single-threaded, and only from the parent. */
	fflush(NULL);
	for (int i = 0; i < WORKERS; i++) {
		pid = fork();
		if (pid == 0)
			exit(worker(pc, listen_fd, 1000));
		if (pid < 0)
			perror("fork");
	}

	/* A worker that crashed or ended with _exit() left blocks in the
	 * arena: give them back once it is reaped. */
	while ((pid = wait(NULL)) > 0) {
		if (arena && ossl_proc_arena_reclaim(arena, pid) > 0)
			fprintf(stderr, "reclaimed what worker %ld left\n",
				(long)pid);
	}
	if (arena && ossl_proc_arena_get_stats(arena, &as) == 0)
		fprintf(stderr, "arena: %llu of %llu bytes in use\n",
			(unsigned long long)as.used_bytes,
			(unsigned long long)as.capacity);
	ossl_proc_ctx_free(pc);
	ossl_proc_report(stderr);
	/* The arena stays mapped: OpenSSL may free into it until exit. */
	ossl_proc_teardown();
	return 0;
}
