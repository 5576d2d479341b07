/* (m) A session ticket key callback on the server: it has no stand-in,
 * so osslproc-run keeps the plugin loaded. */
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "plugin.h"

static unsigned char key_name[16] = "unload-ticket-k";
static unsigned char aes_key[16], hmac_key[32];

static int
set_keys(unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx,
	 int enc)
{
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY,
						  hmac_key, sizeof(hmac_key)),
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
						 "SHA256", 0),
		OSSL_PARAM_construct_end(),
	};

	if (!EVP_CipherInit_ex(cctx, EVP_aes_128_cbc(), NULL, aes_key, iv,
			       enc))
		return -1;
	return EVP_MAC_CTX_set_params(hctx, params) ? 1 : -1;
}

static int
on_ticket(SSL *ssl, unsigned char *name, unsigned char *iv,
	  EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
	(void)ssl;
	if (enc) {
		memcpy(name, key_name, sizeof(key_name));
		if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) <= 0)
			return -1;
		return set_keys(iv, cctx, hctx, 1);
	}
	if (memcmp(name, key_name, sizeof(key_name)))
		return 0;
	return set_keys(iv, cctx, hctx, 0);
}

int
plug_register(SSL_CTX *client, SSL_CTX *server, int times)
{
	(void)client;
	if (RAND_bytes(aes_key, sizeof(aes_key)) <= 0 ||
	    RAND_bytes(hmac_key, sizeof(hmac_key)) <= 0)
		return -1;
	for (int i = 0; i < times; i++)
		if (!SSL_CTX_set_tlsext_ticket_key_evp_cb(server, on_ticket))
			return -1;
	return 0;
}
