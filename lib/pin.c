/*
 * Pinning: making the object that holds osslproc's code RTLD_NODELETE, so
 * that a dlclose() cannot unmap code that OpenSSL can still call (its
 * memory functions, trampolines on live objects, a static libcrypto's
 * thread-exit handler).
 */
#include <dlfcn.h>
#include <link.h>

#include <openssl/crypto.h>

#include "osslproc-int.h"
#include "pin.h"

/*
 * A libcrypto linked into the same object as this copy of osslproc (a
 * plugin carrying static OpenSSL) is unmapped by dlclose, unlike the
 * shared one (-z nodelete).  OpenSSL 3.6 never deletes the thread-local
 * key of crypto/threads_common.c (init_master_key), so every thread that
 * used that libcrypto and exits later calls its destructor,
 * clean_master_key, in unmapped code: such an object stays mapped.
 */
bool
pin_own_libcrypto(void)
{
	/* Where libcrypto lives never changes: look it up once (dladdr
	 * walks the loaded objects), pin every time (the log says so). */
	static _Atomic int own = -1;
	int known = atomic_load_explicit(&own, memory_order_relaxed);
	Dl_info mine, crypto;

	if (known < 0) {
		known = dladdr((void *)pin_self, &mine) &&
			dladdr((void *)OpenSSL_version, &crypto) &&
			crypto.dli_fbase == mine.dli_fbase;
		atomic_store_explicit(&own, known, memory_order_relaxed);
	}
	return known &&
	       pin_self("it contains its own libcrypto: each thread that "
			     "used it runs its thread-exit handler when it "
			     "exits (OpenSSL 3.6 never deletes that key)");
}

/*
 * Make the object holding this code RTLD_NODELETE so that a dlclose()
 * cannot unmap code OpenSSL still calls.  Code in the main program needs
 * no pin.  Returns true when the object is pinned.
 */
bool
pin_self(const char *why)
{
	struct link_map *lm = NULL;
	Dl_info info;
	void *h;

	if (!dladdr1((void *)pin_self, &info, (void **)&lm,
		     RTLD_DL_LINKMAP) || !lm)
		return false;
	if (!lm->l_name || !lm->l_name[0])
		return false; /* the main program */
	h = dlopen(lm->l_name, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
	if (!h) {
		log_error("cannot pin %s (%s); unloading it will crash the "
			  "process", lm->l_name, dlerror());
		return false;
	}
	/* NODELETE is now set; drop the reference dlopen added. */
	dlclose(h);
	log_info("%s stays mapped until exit: %s", lm->l_name, why);
	return true;
}
